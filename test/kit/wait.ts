export const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

export interface WaitOptions {
  /** Default 20 ms. */
  everyMs?: number
  /** Added to the timeout's message (e.g. the record being waited on). */
  state?: () => unknown
}

/**
 * Polls `check` every `everyMs` until it returns a truthy value, which it resolves with. A throw
 * of `check` counts as not yet (a server still starting); after `timeoutMs` it throws, naming
 * `what`, the last error and `state`.
 */
export async function waitFor<T> (what: string, check: () => T | Promise<T>, timeoutMs = 20_000, options: WaitOptions = {}): Promise<NonNullable<T>> {
  const { everyMs = 20, state } = options
  const end = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await check()
      if (value) return value as NonNullable<T>
    } catch (err) {
      lastError = err
    }
    if (Date.now() > end) {
      const extra = state === undefined ? '' : ` — ${JSON.stringify(await state())}`
      const last = lastError === undefined ? '' : ` (last error: ${lastError instanceof Error ? lastError.message : String(lastError)})`
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last}${extra}`)
    }
    await sleep(everyMs)
  }
}
