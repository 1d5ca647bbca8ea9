// Micro-benchmark: the compiled readers (readers.ts) against the hand parsing the coordinator's
// driver did before, on the answers it reads on its hot path. `node protocol/scripts/bench-readers.mjs`
// after `tsc -b protocol`. Both sides get the same parsed values (JSON.parse is common to both).
import { readPrepareAnswer, readErrorCode, readBatchAnswer } from '../dist/index.js'

const SAFE_CODE = /^[A-Z][A-Z0-9_]{0,63}$/
function handPrepare (answer) {
  if (typeof answer !== 'object' || answer === null || Array.isArray(answer)) return undefined
  const vote = answer.vote
  if (vote !== 'yes' && vote !== 'no' && vote !== 'read-only') return undefined
  const batch = answer.batch
  const maxCalls = batch?.maxCalls
  const maxBytes = batch?.maxBytes
  const usable = typeof maxCalls === 'number' && Number.isSafeInteger(maxCalls) && maxCalls >= 2 &&
    typeof maxBytes === 'number' && Number.isSafeInteger(maxBytes) && maxBytes >= 1024
  const reason = typeof answer.reason === 'string' ? answer.reason : undefined
  return { vote, reason, usable }
}
function readerPrepare (answer) {
  const read = readPrepareAnswer(answer)
  if (read === undefined) return undefined
  const usable = read.batch !== undefined && read.batch.maxCalls >= 2 && read.batch.maxBytes >= 1024
  return { vote: read.vote, reason: read.reason, usable }
}
function handCode (answer) {
  const code = typeof answer === 'object' && answer !== null && !Array.isArray(answer) ? answer.code : undefined
  return typeof code === 'string' && SAFE_CODE.test(code) ? code : undefined
}
function handBatch (value, calls) {
  const results = typeof value === 'object' && value !== null && !Array.isArray(value) ? value.results : undefined
  if (!Array.isArray(results) || results.length !== calls) return undefined
  const answers = []
  for (const r of results) {
    const status = r?.status
    if (typeof status !== 'number' || !Number.isInteger(status) || status < 100 || status > 599) return undefined
    answers.push({ status, body: r.body })
  }
  return answers
}

const vote = JSON.parse('{"vote":"yes","batch":{"maxCalls":128,"maxBytes":1048576}}')
const error = JSON.parse('{"statusCode":409,"code":"TX_ALREADY_ABORTED","error":"Conflict","message":"transaction was aborted"}')
const batch = JSON.parse(JSON.stringify({ results: Array.from({ length: 64 }, () => ({ status: 200, body: { vote: 'yes', batch: { maxCalls: 128, maxBytes: 1048576 } } })) }))

/** Runs the hand parsing and the reader alternately (the machine may be busy): the best round of each. */
function pair (name, hand, reader, n) {
  const best = { hand: Infinity, reader: Infinity }
  const kept = new Array(n) // every result kept, as the driver keeps what it read (no dead-code elimination)
  for (let round = 0; round < 7; round++) {
    for (const [which, fn] of [['hand', hand], ['reader', reader]]) {
      const t0 = process.hrtime.bigint()
      for (let i = 0; i < n; i++) kept[i] = fn()
      const ns = Number(process.hrtime.bigint() - t0) / n
      if (round > 0 && kept[n - 1] !== undefined) best[which] = Math.min(best[which], ns) // round 0 warms up
    }
  }
  console.log(`${name.padEnd(26)} hand ${best.hand.toFixed(1).padStart(8)} ns   reader ${best.reader.toFixed(1).padStart(8)} ns`)
}
const N = 500_000
pair('prepare answer', () => handPrepare(vote), () => readerPrepare(vote), N)
pair('error code', () => handCode(error), () => readErrorCode(error), N)
pair('batch answer, 64 results', () => handBatch(batch, 64), () => readBatchAnswer(batch, 64), N / 50)
const text = '{"vote":"yes","batch":{"maxCalls":128,"maxBytes":1048576}}'
pair('(JSON.parse of the vote)', () => JSON.parse(text), () => JSON.parse(text), N)
