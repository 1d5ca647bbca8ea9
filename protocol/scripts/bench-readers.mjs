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

function bench (name, fn, n) {
  // Every result is kept until the round ends, as the driver keeps what it read (no dead-code elimination).
  const kept = new Array(n)
  let sink = 0
  for (let i = 0; i < n / 10; i++) kept[i] = fn() // warm-up
  const best = []
  for (let round = 0; round < 5; round++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < n; i++) kept[i] = fn()
    if (kept[n - 1] !== undefined) sink++
    best.push(Number(process.hrtime.bigint() - t0) / n)
  }
  console.log(`${name.padEnd(34)} ${Math.min(...best).toFixed(1).padStart(7)} ns/op (best of 5; ${sink > 0 ? 'ok' : '-'})`)
}
const N = 1_000_000
bench('prepare answer, hand', () => handPrepare(vote), N)
bench('prepare answer, reader', () => readerPrepare(vote), N)
bench('error code, hand', () => handCode(error), N)
bench('error code, reader', () => readErrorCode(error), N)
bench('batch answer (64 results), hand', () => handBatch(batch, 64), N / 20)
bench('batch answer (64 results), reader', () => readBatchAnswer(batch, 64), N / 20)
const text = '{"vote":"yes","batch":{"maxCalls":128,"maxBytes":1048576}}'
bench('JSON.parse of that vote (for scale)', () => JSON.parse(text), N)
