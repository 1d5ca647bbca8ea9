import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { buildStockService } from '../examples/reserve-stock.js'
import { BATCH, callback, txid } from './helpers.js'

t.test('the README example is the file that is tested here', async t => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const example = readFileSync(new URL('../examples/reserve-stock.ts', import.meta.url), 'utf8')
  t.ok(readme.includes(example.trim()), 'README embeds examples/reserve-stock.ts verbatim')
})

t.test('the example reserves on prepare, spends on commit, releases on abort', async t => {
  const app = await buildStockService({ dbPath: join(t.testdir(), 'inventory.db'), coordinatorUrl: 'http://127.0.0.1:9' })
  app.log.level = 'silent'
  t.teardown(() => app.close())
  const stock = async (): Promise<number> => (await app.inject('/stock/apple')).json().available
  const [kept, released] = [txid(), txid()]
  for (const id of [kept, released]) {
    const res = await app.inject(callback('/2pc/prepare', { txid: id, participant: 'inventory', payload: { sku: 'apple', qty: 4 }, deadline: Date.now() + 10_000 }))
    t.same(res.json(), { vote: 'yes', batch: BATCH })
  }
  t.equal(await stock(), 2)
  const tooMuch = await app.inject(callback('/2pc/prepare', { txid: txid(), participant: 'inventory', payload: { sku: 'apple', qty: 3 }, deadline: Date.now() + 10_000 }))
  t.equal(tooMuch.json().vote, 'no')
  t.same((await app.inject(callback('/2pc/commit', { txid: kept }))).json(), { ok: true })
  t.same((await app.inject(callback('/2pc/abort', { txid: released }))).json(), { ok: true })
  t.equal(await stock(), 6)
})
