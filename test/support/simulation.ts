/**
 * Over 500 lines: the model of every process, its faults and the invariants checked after each
 * step belong to one seeded schedule.
 *
 * Deterministic simulation of the whole protocol over the two REAL pure state machines: the
 * coordinator's `step` (coordinator/src/core/machine.ts) and the participant's `transition`
 * (participant-sdk/src/state-machine.ts). No I/O, no clock, no Math.random: one seed, one
 * schedule, replayed exactly.
 *
 * What is modelled (and what each process keeps over a crash):
 * - Coordinator: durable = its log (every changed step's record, written before any effect is
 *   carried out, as engine.ts does) and its outbox (decision notices written in the same
 *   transaction as the record). Volatile = effects not carried out yet, HTTP calls in flight and
 *   their timeouts, phase-2 retry timers, the initiator's connection. A restart replays
 *   `recovered` for every record.
 * - Participant: durable = its log (one RecordState per transaction; prepare handler + record
 *   in one local transaction, so a crash inside prepare leaves nothing). Volatile = its pending
 *   in-doubt queries. Crashes: at any moment, inside a request before the local commit, and
 *   after the local commit before the reply (or before the AMQP ack).
 * - Network: HTTP requests and replies in flight, picked in any order (reordering), lost,
 *   duplicated; a reply reaches only the coordinator incarnation that made the call. Calls time
 *   out. RabbitMQ: durable queues (decision notices per participant, acks to the coordinator),
 *   at-least-once (an outbox row may be published twice; a notice not acked is redelivered).
 * - The initiator: one-shot begin (begin + enlist in one write), then commit; sometimes an
 *   abort request races it. Transactions expire.
 *
 * Invariants, checked on every write and at quiescence:
 * - a logged decision never changes;
 * - commit is logged only if every participant voted yes/read-only (its vote really sent, its
 *   durable record prepared/committed/read-only at that moment);
 * - no participant records committed unless the coordinator's log says committed; none records
 *   aborted/tombstone when the log says committed; a participant's final state never flips;
 * - no heuristic outcome (a refused decision, a dead-lettered notice);
 * - at quiescence (faults stop, everyone restarted, messages drained): every transaction is
 *   decided and completed, every participant that prepared applied the decision, nothing is
 *   left in flight, in the outbox or in a queue.
 */
import { step as realStep, newTransaction, decisionOf, isDecided } from '../../coordinator/src/core/machine.js'
import type { Transaction, Event, Effect as CEffect, Policy, StepResult } from '../../coordinator/src/core/machine.js'
import { transition as realTransition } from '../../participant-sdk/src/state-machine.js'
import type { RecordState, ParticipantEvent, Step, PrepareOutcome, Reply } from '../../participant-sdk/src/state-machine.js'
import { seededRandom } from '../kit/random.js'

export type CoordinatorStep = (tx: Transaction, event: Event, policy: Policy) => StepResult
export type ParticipantTransition = (state: RecordState, event: ParticipantEvent) => Step

export interface Machines {
  step: CoordinatorStep
  transition: ParticipantTransition
}

export const REAL_MACHINES: Machines = { step: realStep, transition: realTransition }

export type SimResult =
  | { ok: true, seed: number, steps: number, faults: number, decisions: string[], trace: string[] }
  | { ok: false, seed: number, steps: number, why: string, trace: string[] }

export interface SimStats {
  schedules: number
  steps: number
  faults: number
  commits: number
  aborts: number
}

const POLICY: Policy = { maxParticipants: 8, maxMessages: 8, retryBaseMs: 5, retryMaxMs: 40, retryBudget: 3 }
const TX_TIMEOUT = 120
const PREPARE_DEADLINE = 60

type Msg =
  | { kind: 'prepare', to: string, txid: string, callId: number, epoch: number, deadline: number }
  | { kind: 'decision', to: string, txid: string, callId: number, epoch: number, decision: 'commit' | 'abort' }
  | { kind: 'reply', callId: number, epoch: number, reply: Reply }
  | { kind: 'query', from: string, txid: string, pEpoch: number }
  | { kind: 'answer', to: string, txid: string, pEpoch: number, decision: 'commit' | 'abort' | 'pending' }

interface Call { txid: string, participant: string, kind: 'prepare' | 'decision' }
interface Notice { rowId: number, txid: string, participant: string, decision: 'commit' | 'abort' }

interface PState {
  name: string
  up: boolean
  epoch: number
  log: Map<string, RecordState>
  /** What its prepare handler will do, per transaction. */
  plan: Map<string, PrepareOutcome>
  /** Its RabbitMQ decision queue (durable; survives both crashes). */
  queue: Notice[]
  querying: Set<string>
}

interface ClientTx { txid: string, participants: string[], phase: 'unborn' | 'begun' | 'done', epoch: number }

class Violation extends Error {}

export function simulate (seed: number, options: { machines?: Machines, trace?: boolean } = {}): SimResult {
  const { step, transition } = options.machines ?? REAL_MACHINES
  const tracing = options.trace === true
  const rnd = seededRandom(seed)
  const int = (n: number): number => Math.floor(rnd() * n)
  const chance = (p: number): boolean => rnd() < p
  const trace: string[] = []
  const note = (line: string): void => { if (tracing) trace.push(`${now}: ${line}`) }

  let now = 0
  let steps = 0
  let faults = 0
  let callSeq = 0
  let rowSeq = 0

  // ---- the world -------------------------------------------------------------------------
  const nParticipants = 1 + int(3)
  const parts = new Map<string, PState>()
  for (let i = 0; i < nParticipants; i++) {
    const name = `p${i}`
    parts.set(name, { name, up: true, epoch: 0, log: new Map(), plan: new Map(), queue: [], querying: new Set() })
  }
  const names = [...parts.keys()]
  const clients: ClientTx[] = []
  const nTx = 1 + int(2)
  for (let i = 0; i < nTx; i++) {
    const txid = `c.s${seed}t${i}`
    // Each transaction enlists a random non-empty subset (in random order).
    const chosen = names.filter(() => chance(0.8))
    if (chosen.length === 0) chosen.push(names[int(names.length)] as string)
    clients.push({ txid, participants: chosen, phase: 'unborn', epoch: -1 })
    for (const p of chosen) {
      const r = rnd()
      parts.get(p)?.plan.set(txid, r < 0.72 ? 'yes' : r < 0.82 ? 'no' : r < 0.91 ? 'read-only' : 'threw')
    }
  }

  const coord = {
    up: true,
    epoch: 0,
    log: new Map<string, Transaction>(),
    outbox: [] as Array<Notice & { published: boolean }>,
    outgoing: [] as Array<{ txid: string, effect: CEffect }>,
    calls: new Map<number, Call>(),
    timers: [] as Array<{ txid: string, participant: string, at: number }>,
    acks: [] as Array<{ txid: string, participant: string }>
  }
  let net: Msg[] = []
  const firstDecision = new Map<string, 'commit' | 'abort'>()
  /** Votes participants really sent (ghost state: what the coordinator may have heard). */
  const votesSent = new Map<string, Set<string>>()

  const fail = (why: string): never => { throw new Violation(why) }
  const coordState = (txid: string): string => coord.log.get(txid)?.state ?? 'none'

  // ---- coordinator -----------------------------------------------------------------------
  function persistCoordinator (prev: Transaction | undefined, next: Transaction, effects: CEffect[]): void {
    const before = prev === undefined ? null : decisionOf(prev)
    const after = decisionOf(next)
    if (before !== null && after !== before) fail(`${next.id}: decision changed ${before} -> ${String(after)}`)
    if (after !== null) {
      const first = firstDecision.get(next.id)
      if (first !== undefined && first !== after) fail(`${next.id}: decision changed ${first} -> ${after}`)
      firstDecision.set(next.id, after)
    }
    if (after === 'commit' && before === null) {
      for (const p of next.participants) {
        if (p.vote !== 'yes' && p.vote !== 'read-only') fail(`${next.id}: committed with ${p.name} vote ${String(p.vote)}`)
        const sent = votesSent.get(`${next.id}/${p.name}`)
        if (sent === undefined || !(sent.has('yes') || sent.has('read-only'))) fail(`${next.id}: committed but ${p.name} never voted yes/read-only`)
        const state = parts.get(p.name)?.log.get(next.id) ?? 'none'
        if (state !== 'prepared' && state !== 'read-only' && state !== 'committed') fail(`${next.id}: committed while ${p.name} is ${state}`)
      }
    }
    for (const e of effects) {
      if (e.type === 'send-decision' && e.decision !== after) fail(`${next.id}: send-decision ${e.decision} while the log says ${next.state}`)
    }
    coord.log.set(next.id, next) // durable, with its outbox rows, before any effect
    for (const e of effects) {
      if (e.type === 'notify') coord.outbox.push({ rowId: ++rowSeq, txid: next.id, participant: e.participant, decision: e.decision, published: false })
    }
    note(`coordinator logged ${next.id} ${next.state} [${next.participants.map(p => `${p.name}:${String(p.vote)}/${p.ack}`).join(' ')}]`)
  }

  function coordinatorEvent (txid: string, event: Event): void {
    if (!coord.up) return
    const prev = coord.log.get(txid)
    if (prev === undefined) return
    const r = step(prev, event, POLICY)
    if (!r.ok) { note(`coordinator rejected ${event.type} for ${txid}: ${r.code}`); return }
    if (r.changed) persistCoordinator(prev, r.tx, r.effects)
    for (const effect of r.effects) {
      if (effect.type === 'send-prepare' || effect.type === 'send-decision' || effect.type === 'schedule-phase2') coord.outgoing.push({ txid, effect })
    }
  }

  function carryOut (index: number): void {
    const [item] = coord.outgoing.splice(index, 1)
    if (item === undefined) return
    const { txid, effect } = item
    if (effect.type === 'send-prepare') {
      const callId = ++callSeq
      coord.calls.set(callId, { txid, participant: effect.participant, kind: 'prepare' })
      net.push({ kind: 'prepare', to: effect.participant, txid, callId, epoch: coord.epoch, deadline: now + PREPARE_DEADLINE })
    } else if (effect.type === 'send-decision') {
      // A participant's `send-decision` means a new call; one already in flight keeps going too.
      const callId = ++callSeq
      coord.calls.set(callId, { txid, participant: effect.participant, kind: 'decision' })
      net.push({ kind: 'decision', to: effect.participant, txid, callId, epoch: coord.epoch, decision: effect.decision })
    } else if (effect.type === 'schedule-phase2') {
      coord.timers.push({ txid, participant: effect.participant, at: effect.at })
    }
  }

  function callFailed (callId: number, why: string): void {
    const call = coord.calls.get(callId)
    if (call === undefined) return
    coord.calls.delete(callId)
    note(`call ${callId} (${call.kind} ${call.participant} ${call.txid}) failed: ${why}`)
    if (call.kind === 'prepare') coordinatorEvent(call.txid, { type: 'prepare-failed', participant: call.participant, error: why, now })
    else coordinatorEvent(call.txid, { type: 'phase2-failed', participant: call.participant, error: why, refused: false, jitter: rnd(), now })
  }

  function callAnswered (callId: number, reply: Reply): void {
    const call = coord.calls.get(callId)
    if (call === undefined) return // timed out meanwhile: the HTTP client dropped it
    coord.calls.delete(callId)
    if (call.kind === 'prepare') {
      if (reply.type === 'vote') {
        const event: Event = reply.reason === undefined
          ? { type: 'vote', participant: call.participant, vote: reply.vote, now }
          : { type: 'vote', participant: call.participant, vote: reply.vote, reason: reply.reason, now }
        coordinatorEvent(call.txid, event)
      } else coordinatorEvent(call.txid, { type: 'prepare-failed', participant: call.participant, error: `answer ${reply.type}`, now })
    } else if (reply.type === 'ok') {
      coordinatorEvent(call.txid, { type: 'phase2-acked', participant: call.participant, now })
    } else {
      const error = reply.type === 'error' ? `${reply.statusCode} ${reply.code}` : `answer ${reply.type}`
      fail(`${call.txid}: heuristic — ${call.participant} refused the decision (${error})`)
    }
  }

  function crashCoordinator (): void {
    note('CRASH coordinator')
    coord.up = false
    coord.outgoing = []
    coord.calls.clear()
    coord.timers = []
    // Replies on their way to the dead process die with its connections.
    net = net.filter(m => m.kind !== 'reply')
    for (const c of clients) if (c.phase === 'begun') c.phase = 'done' // the initiator lost its connection
  }

  function restartCoordinator (): void {
    coord.up = true
    coord.epoch++
    note(`RESTART coordinator (epoch ${coord.epoch})`)
    for (const txid of [...coord.log.keys()]) coordinatorEvent(txid, { type: 'recovered', now })
  }

  function answerQuery (m: Extract<Msg, { kind: 'query' }>): void {
    const tx = coord.log.get(m.txid)
    // The decision endpoint reads the durable record; an id it issued but has no record of: presumed abort.
    const decision = tx === undefined ? 'abort' : decisionOf(tx) ?? 'pending'
    net.push({ kind: 'answer', to: m.from, txid: m.txid, pEpoch: m.pEpoch, decision })
  }

  // ---- participants ----------------------------------------------------------------------
  function writeParticipant (p: PState, txid: string, next: RecordState): void {
    const prev = p.log.get(txid) ?? 'none'
    if (prev === next) return
    const c = coordState(txid)
    if (prev === 'committed') fail(`${p.name} ${txid}: committed -> ${next}`)
    if ((prev === 'aborted' || prev === 'tombstone') && next === 'committed') fail(`${p.name} ${txid}: ${prev} -> committed`)
    if (next === 'committed' && c !== 'committed') fail(`${p.name} ${txid}: committed while the coordinator's log says ${c}`)
    if ((next === 'aborted' || next === 'tombstone') && c === 'committed') fail(`${p.name} ${txid}: ${next} a transaction the coordinator committed`)
    p.log.set(txid, next)
    note(`${p.name} logged ${txid} ${next}`)
  }

  /** One local transaction: the steps, the handlers, the record. Returns the reply. */
  function participantHandle (p: PState, m: Extract<Msg, { kind: 'prepare' | 'decision' }>, crash: 'none' | 'before-commit' | 'after-commit'): Reply | undefined {
    const state = p.log.get(m.txid) ?? 'none'
    let s: Step
    if (m.kind === 'prepare') {
      s = transition(state, { type: 'prepare', now, deadline: m.deadline, onePhase: false })
      if (s.effects.some(e => e.type === 'run-prepare-handler')) {
        s = transition(state, { type: 'prepare-handled', outcome: p.plan.get(m.txid) ?? 'no', onePhase: false })
      }
    } else {
      s = transition(state, { type: m.decision })
    }
    if (crash === 'before-commit') { crashParticipant(p, 'in the request, before the local commit'); return undefined }
    if (s.next !== undefined && s.next !== 'none') writeParticipant(p, m.txid, s.next)
    if (crash === 'after-commit') { crashParticipant(p, 'after the local commit, before the reply'); return undefined }
    if (s.reply.type === 'vote') {
      const key = `${m.txid}/${p.name}`
      let set = votesSent.get(key)
      if (set === undefined) votesSent.set(key, set = new Set())
      set.add(s.reply.vote)
    }
    return s.reply
  }

  function crashParticipant (p: PState, where: string): void {
    note(`CRASH ${p.name} (${where})`)
    p.up = false
    p.querying.clear()
  }

  function restartParticipant (p: PState): void {
    p.up = true
    p.epoch++
    note(`RESTART ${p.name}`)
  }

  function consumeNotice (p: PState, index: number, crashBeforeAck: boolean): void {
    const notice = p.queue[index] as Notice
    const state = p.log.get(notice.txid) ?? 'none'
    const s = transition(state, { type: notice.decision })
    if (s.reply.type === 'error') fail(`${notice.txid}: heuristic — ${p.name} dead-lettered a ${notice.decision} notice (${s.reply.code})`)
    if (s.next !== undefined && s.next !== 'none') writeParticipant(p, notice.txid, s.next)
    p.querying.delete(notice.txid)
    if (crashBeforeAck) { crashParticipant(p, 'after the local commit, before the AMQP ack'); return } // redelivered later
    p.queue.splice(index, 1)
    coord.acks.push({ txid: notice.txid, participant: p.name })
  }

  // ---- the scheduler ---------------------------------------------------------------------
  type Action = { w: number, run: () => void }
  const faultBudget = int(8)
  const chaosSteps = 20 + int(120)
  let chaos = true

  function actions (): Action[] {
    const list: Action[] = []
    const faulty = chaos && faults < faultBudget
    const fault = (w: number, run: () => void): void => { if (faulty) list.push({ w, run: () => { faults++; run() } }) }

    for (const c of clients) {
      if (c.phase === 'unborn' && coord.up) {
        list.push({
          w: 3,
          run: () => {
            let tx = newTransaction(c.txid, now, now + TX_TIMEOUT)
            for (const name of c.participants) {
              const r = step(tx, { type: 'enlist', participant: { name, url: `http://${name}` }, now }, POLICY)
              if (!r.ok) fail(`enlist rejected: ${r.code}`)
              tx = r.tx
            }
            persistCoordinator(undefined, tx, []) // begin + enlist: one write
            c.phase = 'begun'
            c.epoch = coord.epoch
            note(`initiator began ${c.txid} with ${c.participants.join(',')}`)
          }
        })
      }
      if (c.phase === 'begun' && coord.up && coord.epoch === c.epoch) {
        list.push({ w: 3, run: () => { c.phase = 'done'; note(`initiator commits ${c.txid}`); coordinatorEvent(c.txid, { type: 'commit-requested', now }) } })
        if (chaos) list.push({ w: 0.3, run: () => { note(`initiator aborts ${c.txid}`); coordinatorEvent(c.txid, { type: 'abort-requested', now }) } })
      }
    }

    if (coord.up) {
      for (let i = 0; i < coord.outgoing.length; i++) list.push({ w: 4, run: () => carryOut(i) })
      for (let i = 0; i < coord.timers.length; i++) {
        list.push({
          w: 1,
          run: () => {
            const [timer] = coord.timers.splice(i, 1)
            if (timer === undefined) return
            now = Math.max(now, timer.at)
            coordinatorEvent(timer.txid, { type: 'phase2-due', participant: timer.participant, now })
          }
        })
      }
      for (let i = 0; i < coord.outbox.length; i++) {
        const row = coord.outbox[i]
        if (row === undefined || row.published) continue
        list.push({
          w: 1,
          run: () => {
            parts.get(row.participant)?.queue.push({ rowId: row.rowId, txid: row.txid, participant: row.participant, decision: row.decision })
            note(`outbox published ${row.decision} for ${row.participant} ${row.txid}`)
            row.published = true
          }
        })
        // Published, confirmed, then the crash before the row was marked: published again later.
        fault(0.3, () => {
          parts.get(row.participant)?.queue.push({ rowId: row.rowId, txid: row.txid, participant: row.participant, decision: row.decision })
          note(`outbox published ${row.decision} for ${row.participant} ${row.txid}, then crashed before marking it`)
          crashCoordinator()
        })
      }
      if (coord.acks.length > 0) {
        list.push({
          w: 2,
          run: () => {
            const ack = coord.acks.splice(int(coord.acks.length), 1)[0]
            if (ack !== undefined) coordinatorEvent(ack.txid, { type: 'phase2-acked', participant: ack.participant, now })
          }
        })
      }
    }

    // Messages in flight: delivered in any order, lost, duplicated.
    for (let i = 0; i < net.length; i++) {
      const m = net[i] as Msg
      list.push({ w: 4, run: () => { net.splice(i, 1); deliver(m) } })
      fault(0.4, () => { net.splice(i, 1); note(`LOST ${describe(m)}`) })
      fault(0.3, () => { net.push({ ...m }); note(`DUPLICATED ${describe(m)}`) })
    }

    // Calls time out (whatever is in flight for them: the answer may still arrive, and is dropped).
    if (coord.up) {
      for (const callId of coord.calls.keys()) {
        if (chaos) list.push({ w: 0.3, run: () => { now += 5; callFailed(callId, 'timeout') } })
        else if (!net.some(m => (m.kind === 'reply' || m.kind === 'prepare' || m.kind === 'decision') && m.callId === callId)) {
          list.push({ w: 0.2, run: () => { now += 5; callFailed(callId, 'timeout') } })
        }
      }
      for (const tx of coord.log.values()) {
        if (!isDecided(tx) && (chaos || list.length === 0)) list.push({ w: chaos ? 0.05 : 1, run: () => { now = Math.max(now, tx.expiresAt); coordinatorEvent(tx.id, { type: 'expired', now }) } })
      }
    }

    for (const p of parts.values()) {
      if (p.up) {
        for (let i = 0; i < p.queue.length; i++) {
          list.push({ w: 2, run: () => consumeNotice(p, i, false) })
          fault(0.3, () => consumeNotice(p, i, true))
        }
        for (const [txid, state] of p.log) {
          if (state === 'prepared' && !p.querying.has(txid)) {
            // In-doubt recovery asks the coordinator (rarely while things are still moving).
            list.push({ w: chaos ? 0.3 : 0.5, run: () => { p.querying.add(txid); net.push({ kind: 'query', from: p.name, txid, pEpoch: p.epoch }) } })
          }
        }
        fault(0.5, () => crashParticipant(p, 'at a random moment'))
      } else {
        list.push({ w: 1, run: () => restartParticipant(p) })
      }
    }
    if (coord.up) fault(0.5, crashCoordinator)
    else list.push({ w: 1, run: restartCoordinator })
    return list
  }

  function describe (m: Msg): string {
    switch (m.kind) {
      case 'prepare': return `prepare ${m.txid} -> ${m.to} (call ${m.callId})`
      case 'decision': return `${m.decision} ${m.txid} -> ${m.to} (call ${m.callId})`
      case 'reply': return `reply ${JSON.stringify(m.reply)} (call ${m.callId})`
      case 'query': return `decision query ${m.txid} from ${m.from}`
      case 'answer': return `decision answer ${m.decision} ${m.txid} -> ${m.to}`
    }
  }

  function deliver (m: Msg): void {
    note(`deliver ${describe(m)}`)
    switch (m.kind) {
      case 'prepare':
      case 'decision': {
        const p = parts.get(m.to) as PState
        if (!p.up) {
          // Connection refused: the call fails at once (if its caller still exists).
          if (coord.up && coord.epoch === m.epoch) callFailed(m.callId, 'connection refused')
          return
        }
        const crash: 'none' | 'before-commit' | 'after-commit' =
          chaos && faults < faultBudget && chance(0.04) ? (chance(0.5) ? 'before-commit' : 'after-commit') : 'none'
        if (crash !== 'none') faults++
        const reply = participantHandle(p, m, crash)
        if (reply !== undefined) net.push({ kind: 'reply', callId: m.callId, epoch: m.epoch, reply })
        return
      }
      case 'reply':
        if (coord.up && coord.epoch === m.epoch) callAnswered(m.callId, m.reply)
        return
      case 'query': {
        const p = parts.get(m.from) as PState
        if (!coord.up) { if (p.epoch === m.pEpoch) p.querying.delete(m.txid); return } // refused: ask again later
        answerQuery(m)
        return
      }
      case 'answer': {
        const p = parts.get(m.to) as PState
        if (!p.up || p.epoch !== m.pEpoch) return
        p.querying.delete(m.txid)
        const state = p.log.get(m.txid) ?? 'none'
        const s = transition(state, { type: 'decision-answer', decision: m.decision })
        if (s.next !== undefined && s.next !== 'none') writeParticipant(p, m.txid, s.next)
      }
    }
  }

  function pick (list: Action[]): Action {
    let total = 0
    for (const a of list) total += a.w
    let r = rnd() * total
    for (const a of list) {
      r -= a.w
      if (r < 0) return a
    }
    return list[list.length - 1] as Action
  }

  try {
    for (; steps < chaosSteps; steps++) {
      now += int(3)
      const list = actions()
      if (list.length === 0) break
      pick(list).run()
    }
    // Quiescence: no more faults; everyone up; drain.
    chaos = false
    note('--- faults stop ---')
    const cap = steps + 20_000
    for (;;) {
      if (steps++ > cap) fail('no quiescence after 20000 fault-free steps (livelock)')
      now += 1
      const list = actions()
      // Transactions the initiator never got to: the initiator gave up (it is not a fault).
      if (list.length === 0) break
      pick(list).run()
    }
    checkQuiescent()
  } catch (err) {
    if (err instanceof Violation) return { ok: false, seed, steps, why: err.message, trace }
    throw err
  }

  function checkQuiescent (): void {
    if (net.length > 0 || coord.outgoing.length > 0 || coord.calls.size > 0 || coord.timers.length > 0 || coord.acks.length > 0) fail('quiescent with work left')
    if (coord.outbox.some(r => !r.published)) fail('quiescent with an unpublished outbox row')
    for (const tx of coord.log.values()) {
      const decision = decisionOf(tx)
      if (decision === null) fail(`${tx.id}: undecided at quiescence (${tx.state})`)
      if (tx.completedAt === null) fail(`${tx.id}: not completed at quiescence [${tx.participants.map(p => `${p.name}:${p.ack}`).join(' ')}]`)
      for (const p of tx.participants) if (p.ack === 'heuristic' || p.ack === 'resolved') fail(`${tx.id}: ${p.name} ack ${p.ack}`)
    }
    for (const p of parts.values()) {
      if (!p.up) fail(`${p.name} down at quiescence`)
      if (p.queue.length > 0) fail(`${p.name}: ${p.queue.length} notices left in its queue`)
      for (const [txid, state] of p.log) {
        const decision = coord.log.get(txid) === undefined ? 'abort' : decisionOf(coord.log.get(txid) as Transaction)
        if (state === 'prepared') fail(`${p.name} ${txid}: still prepared at quiescence (coordinator: ${String(decision)})`)
        if (decision === 'commit' && state !== 'committed' && state !== 'read-only') fail(`${p.name} ${txid}: ${state}, the coordinator committed`)
        if (decision === 'abort' && state === 'committed') fail(`${p.name} ${txid}: committed, the coordinator aborted`)
      }
    }
    // Every participant of a committed transaction applied it (not just: no one disagrees).
    for (const tx of coord.log.values()) {
      if (tx.state !== 'committed') continue
      for (const p of tx.participants) {
        const state = parts.get(p.name)?.log.get(tx.id) ?? 'none'
        if (state !== 'committed' && state !== 'read-only') fail(`${tx.id}: committed, but ${p.name} is ${state}`)
      }
    }
  }

  return { ok: true, seed, steps, faults, decisions: [...coord.log.values()].map(tx => tx.state), trace }
}

export function runSchedules (first: number, count: number, machines: Machines = REAL_MACHINES): { stats: SimStats, failure: Extract<SimResult, { ok: false }> | undefined } {
  const stats: SimStats = { schedules: 0, steps: 0, faults: 0, commits: 0, aborts: 0 }
  for (let seed = first; seed < first + count; seed++) {
    const r = simulate(seed, { machines })
    stats.schedules++
    stats.steps += r.steps
    if (!r.ok) return { stats, failure: r }
    stats.faults += r.faults
    for (const d of r.decisions) {
      if (d === 'committed') stats.commits++
      else stats.aborts++
    }
  }
  return { stats, failure: undefined }
}
