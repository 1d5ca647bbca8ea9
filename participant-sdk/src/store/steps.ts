/**
 * Runs logic written once against a store that may be synchronous or asynchronous. The logic is
 * a generator that yields each store operation's result (`const state = yield tx.stateOf(id)`);
 * `drive` feeds the value back. While every yielded value is a plain value the whole generator
 * runs synchronously, in the caller's call: no promise, no microtask (SQLite: a batch of 64
 * callbacks is one synchronous flush). From the first promise on it continues asynchronously and
 * `drive` returns one promise for the whole run.
 */
import type { MaybePromise } from './store.js'

/** Logic over store operations: yields MaybePromise values, gets their results back. */
export type Steps<T> = Generator<unknown, T, unknown>

export function isThenable (value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null)?.then === 'function'
}

/**
 * Runs `steps` to the end; returns its result, or a promise of it once a step was a promise.
 * A synchronous throw inside the steps propagates synchronously; a rejected promise is thrown
 * into the generator at its `yield` (so its try/catch blocks see it).
 */
export function drive<T> (steps: Steps<T>): MaybePromise<T> {
  let next = steps.next()
  while (next.done !== true) {
    if (isThenable(next.value)) return resume(steps, next.value)
    next = steps.next(next.value)
  }
  return next.value
}

async function resume<T> (steps: Steps<T>, pending: unknown): Promise<T> {
  for (;;) {
    let value: unknown
    let failed = false
    try {
      value = await pending
    } catch (err) {
      value = err
      failed = true
    }
    const next: IteratorResult<unknown, T> = failed ? steps.throw(value) : steps.next(value)
    if (next.done === true) return next.value
    pending = next.value
  }
}

/** `then` for a MaybePromise: synchronous when the value is. */
export function whenValue<T, R> (value: MaybePromise<T>, f: (value: T) => R): R | Promise<R> {
  return isThenable(value) ? Promise.resolve(value).then(f) : f(value)
}

/**
 * The value of a store read that a synchronous API returns (`app.twoPhase.stateOf`, `inDoubt`,
 * `prune`): SQLite answers at once; an asynchronous store needs the API's async form.
 */
export function mustBeSync<T> (value: MaybePromise<T>, what: string): T {
  if (isThenable(value)) throw new TypeError(`${what} needs a synchronous store: this store answers asynchronously`)
  return value
}
