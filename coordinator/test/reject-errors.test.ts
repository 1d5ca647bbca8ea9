/**
 * The one mapping from the machine's refusals to API errors: every RejectCode has an entry (a code
 * without one does not compile, checked below by the type checker), each answers the API error of
 * the same code, and the routes and operator actions both go through it.
 */
import t from 'tap'
import { newTransaction, type RejectCode } from '../src/core/machine.js'
import { NotFound, Rejected } from '../src/engine.js'
import { REJECT_ERRORS, apiErrorOf, type RejectMapping } from '../src/reject-errors.js'
import { operatorError } from '../src/admin/api.js'

// @ts-expect-error a code added to the machine's union without a mapping is a compile error
const missing: RejectMapping<RejectCode | 'A_NEW_CODE'> = REJECT_ERRORS
void missing

const { TX_NOT_DECIDED: _dropped, ...withoutOne } = REJECT_ERRORS
// @ts-expect-error a mapping that leaves out one of the machine's codes does not compile
const partial: RejectMapping = withoutOne
void partial

const limits = { maxParticipants: 7, maxMessages: 9 }
const tx = { ...newTransaction('c1.abc', 0, 1000), state: 'preparing' as const }

t.test('every refusal maps to the API error of the same code', async t => {
  const codes = Object.keys(REJECT_ERRORS) as RejectCode[]
  t.equal(codes.length, 9)
  for (const code of codes) {
    const err = apiErrorOf(new Rejected(code, tx), 'c1.abc', limits) as Error & { code: string, statusCode: number }
    t.equal(err.code, code, code)
    t.ok(err.statusCode === 400 || err.statusCode === 409, `${code}: ${err.statusCode}`)
    t.notOk(err instanceof Rejected, code)
  }
})

t.test('the messages name the transaction, its state, expiry and the limits', async t => {
  const of = (code: RejectCode): string => apiErrorOf(new Rejected(code, tx), 'c1.abc', limits).message
  t.equal(of('TX_NOT_ACTIVE'), 'transaction c1.abc is preparing, not active')
  t.equal(of('TX_NOT_DECIDED'), 'transaction c1.abc is preparing: it has no decision yet')
  t.equal(of('PARTICIPANT_EXISTS'), 'transaction c1.abc already has a participant named (duplicate)')
  t.equal(of('TOO_MANY_PARTICIPANTS'), 'a transaction takes at most 7 participants')
  t.equal(of('TOO_MANY_MESSAGES'), 'a transaction takes at most 9 messages')
  t.match(of('TX_EXPIRED'), `expired at ${new Date(1000).toISOString()}`)
})

t.test('not found, limits unknown, and other errors', async t => {
  t.match(apiErrorOf(new NotFound('c1.x'), 'c1.x'), { code: 'TX_NOT_FOUND', statusCode: 404 })
  const tooMany = new Rejected('TOO_MANY_PARTICIPANTS', tx)
  t.equal(apiErrorOf(tooMany, 'c1.abc'), tooMany, 'without limits the refusal is passed on as it is')
  const other = new Error('disk')
  t.equal(apiErrorOf(other, 'c1.abc', limits), other)
  t.match(operatorError(new Rejected('NOTHING_TO_RETRY', tx), 'c1.abc'), { code: 'NOTHING_TO_RETRY', statusCode: 409 })
  t.match(operatorError(new NotFound('c1.abc'), 'c1.abc'), { code: 'TX_NOT_FOUND' })
})
