/**
 * The admin console in a real headless Chromium (Debian's /usr/bin/chromium driven by
 * playwright-core) against a real coordinator and real participants: log in with the token,
 * the list shows a committed and an aborted transaction, the detail page shows the timeline,
 * and "Retry now" delivers a decision that a participant failed with 503 before it recovered.
 * Takes a screenshot (into the test's directory, the browser profile being a temp dir of its own; with TWOPC_UPDATE_SCREENSHOT=1 into
 * docs/admin-console.png, the README's picture). Without chromium: skipped loudly, or failed under CI=true.
 */
import t from 'tap'
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { fileURLToPath } from 'node:url'
import { join } from 'node:path'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
import { startCoordinator, startParticipant, waitFor } from '../coordinator/test/support/participant.js'
import { missingTool } from './kit/tools.js'

const CHROMIUM = '/usr/bin/chromium'
const TOKEN = 'console-test-token-0123456789'
const README_SCREENSHOT = fileURLToPath(new URL('../docs/admin-console.png', import.meta.url))

if (!existsSync(CHROMIUM)) {
  t.test('admin console in headless Chromium', async t => {
    missingTool(t, `${CHROMIUM} is missing: the admin console test needs Debian's chromium`, 'apt-get install -y chromium')
  })
} else {
  // A browser start-up on a loaded machine can take a while; the limit still bounds it.
  t.setTimeout(360_000)
  t.test('admin console in headless Chromium: list, timeline, retry', async t => {
    const c = await startCoordinator(t, { apiToken: TOKEN, retryBaseMs: 600_000, retryMaxMs: 600_000 })
    const inventory = await startParticipant(t)
    const payment = await startParticipant(t, { phase2Failure: { status: 503, times: Infinity } })
    const refuser = await startParticipant(t, { vote: 'no' })

    // A committed transaction whose payment participant fails phase 2 (503) ...
    const committed = await c.api.post<{ id: string, state: string }>('/v1/transactions', {
      participants: [{ name: 'inventory', url: inventory.url }, { name: 'payment', url: payment.url }],
      metadata: { order: 'A-17', note: '<img src=x onerror="document.title=\'pwned\'">' },
      commit: true
    })
    t.equal(committed.body.state, 'committed')
    const committedId = committed.body.id
    // ... and an aborted one (a no vote).
    const aborted = await c.api.post<{ id: string, state: string, reason: string }>('/v1/transactions', {
      participants: [{ name: 'inventory', url: inventory.url }, { name: 'fraud-check', url: refuser.url }],
      commit: true
    })
    t.match(aborted.body, { state: 'aborted', reason: 'vote-no' })
    await waitFor(async () => (await c.api.get(`/v1/transactions/${committedId}`)).body.participants[1].attempts >= 1, 5000, 'payment failed once')

    // The browser profile lives outside the test's directory: Chromium's helpers may still be
    // writing to it for a moment after close, and tap's removal of the test directory then
    // failed (ENOTEMPTY) in teardown, which skipped the servers' own teardowns (seen once in CI).
    const userDataDir = mkdtempSync(join(tmpdir(), 'twopc-console-chromium-'))
    const context: BrowserContext = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
      viewport: { width: 1360, height: 900 }
    })
    t.teardown(async () => {
      await context.close()
      // rm retries ENOTEMPTY/EBUSY itself; a profile left in the temp dir harms nothing, so a
      // failure is reported, not thrown (a throw here skips the other teardowns).
      await rm(userDataDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 })
        .catch((err: unknown) => { t.comment(`could not remove the browser profile ${userDataDir}: ${String(err)}`) })
    })
    const page: Page = context.pages()[0] ?? await context.newPage()
    page.setDefaultTimeout(15_000)
    const dialogs: string[] = []
    page.on('dialog', d => { dialogs.push(d.message()); void d.dismiss() })

    // Behind the token: the console sends us to the login form.
    await page.goto(`${c.url}/admin`)
    t.match(new URL(page.url()).pathname, '/admin/login')
    await page.fill('input[name=token]', 'wrong-token')
    await page.click('button[type=submit]')
    t.equal(await page.textContent('#notice'), 'wrong token')
    await page.fill('input[name=token]', TOKEN)
    await page.click('button[type=submit]')
    await page.waitForURL(`${c.url}/admin`)

    // The list: both transactions with their states; the counters.
    t.equal(await page.getAttribute(`tr[data-id="${committedId}"]`, 'data-state'), 'committed')
    t.equal(await page.getAttribute(`tr[data-id="${aborted.body.id}"]`, 'data-state'), 'aborted')
    t.match(await page.textContent(`tr[data-id="${aborted.body.id}"]`), /vote-no/)
    t.match(await page.textContent(`tr[data-id="${committedId}"]`), /pending/)
    t.equal((await page.textContent('[data-counter="committed"] b'))?.trim(), '1')
    t.equal((await page.textContent('[data-counter="aborted"] b'))?.trim(), '1')
    t.equal((await page.textContent('[data-counter="phase 2 unfinished"] b'))?.trim(), '1')

    // Filters: by state and by participant.
    await page.selectOption('select[name=state]', 'aborted')
    await page.click('form.filters button[type=submit]')
    await page.waitForURL(/state=aborted/)
    t.equal(await page.locator('#transactions tbody tr').count(), 1)
    await page.goto(`${c.url}/admin?participant=payment`)
    t.same(await page.locator('#transactions tbody tr').evaluateAll(rows => rows.map(r => r.getAttribute('data-id'))), [committedId])
    await page.goto(`${c.url}/admin/unfinished`)
    t.equal(await page.locator('#transactions tbody tr').count(), 1)

    // The detail page and its timeline.
    await page.goto(`${c.url}/admin`)
    await page.click(`tr[data-id="${committedId}"] a`)
    await page.waitForURL(`${c.url}/admin/tx/${committedId}`)
    t.equal(await page.textContent('#tx-id'), committedId)
    t.match(await page.textContent('#decision'), /commit/)
    const kinds = async (): Promise<string[]> => await page.locator('#timeline tbody tr').evaluateAll(rows => rows.map(r => r.getAttribute('data-kind') ?? ''))
    const before = await kinds()
    for (const k of ['begin', 'enlist', 'prepare', 'vote', 'decision', 'acked', 'phase2-failed']) t.ok(before.includes(k), `timeline shows ${k}`)
    t.ok(before.indexOf('begin') < before.indexOf('vote') && before.indexOf('vote') < before.indexOf('decision') && before.indexOf('decision') < before.indexOf('phase2-failed'), 'in order')
    t.equal(await page.getAttribute('tr[data-participant="payment"]', 'data-ack'), 'pending')
    t.equal(await page.getAttribute('tr[data-participant="inventory"]', 'data-ack'), 'acked')
    // Escaped, not interpreted: the metadata's markup is text.
    t.match(await page.textContent('dl.facts pre'), '<img src=x onerror=')
    t.equal(await page.locator('main img').count(), 0)
    t.not(await page.title(), 'pwned')

    // Retry now: the participant has recovered; the automatic retry is 10 minutes away.
    payment.behaviour.phase2Failure = undefined
    await page.fill('#retry-form input[name=operator]', 'dana')
    await page.click('#retry')
    await page.waitForURL(/done=retry/)
    t.match(await page.textContent('#notice'), /Retry sent/)
    await waitFor(async () => {
      await page.reload()
      return await page.getAttribute('tr[data-participant="payment"]', 'data-ack') === 'acked'
    }, 10_000, 'payment acked on the page')
    t.equal(payment.state(committedId), 'committed')
    const after = await kinds()
    for (const k of ['retry', 'audit-retry', 'completed']) t.ok(after.includes(k), `timeline shows ${k}`)
    t.match(await page.textContent('#audit'), /console:dana/)
    t.not(await page.textContent('#completed'), '—')
    t.match(await page.textContent('#actions'), /No action applies/)
    t.same(dialogs, [], 'no script ran')

    mkdirSync(fileURLToPath(new URL('../docs/', import.meta.url)), { recursive: true })
    const SCREENSHOT = process.env.TWOPC_UPDATE_SCREENSHOT === '1' ? README_SCREENSHOT : join(t.testdir(), 'admin-console.png')
    await page.screenshot({ path: SCREENSHOT, fullPage: true })
    t.ok(existsSync(SCREENSHOT), `screenshot at ${SCREENSHOT}`)

    // Logging out drops the cookie: back to the login form.
    await page.click('header form button')
    await page.waitForURL(/\/admin\/login/)
    await page.goto(`${c.url}/admin`)
    t.match(new URL(page.url()).pathname, '/admin/login')
  })
}
