/**
 * The end of an event-loop turn, in one place (owned by the engine): first the participant
 * callbacks queued in the turn for batching go out (the driver's flush), then the steps saved
 * in the turn are written to the log (one batch), then the log syncs them (forced steps at
 * once, the others lazily). Participants work on their callbacks while the log is written: a
 * one-shot's prepares go out while its begin is written, as without batching.
 *
 * undici (7.30+) writes a request on a reused idle keep-alive socket only in its own
 * `setImmediate` (it first checks the socket was not closed meanwhile), which runs in the NEXT
 * turn when queued from here. Written now, the batch would go to the log before the callbacks
 * just sent reach the wire: a one-shot's begin (~15 WAL pages at one client) then sits between
 * its request and its prepares. So when the batch holds such a begin (`sendsFirst`) and
 * callbacks went out, the write waits one turn, once, behind undici's writes; steps saved
 * meanwhile join it (a vote that comes back first is written in the same batch, after it).
 * Other batches (decisions, the interactive API's steps: their callbacks go out after them)
 * are written at once.
 */

/** The driver's side: the calls queued for batching, and whether requests went out. */
export interface CallbackSender {
  /** Sends every call queued in this turn. */
  flush: () => void
  /** Whether requests were handed to the HTTP client since the last time this was asked. */
  takeSent: () => boolean
  /** Set by the turn's owner: called when a call is queued for the end of the turn. */
  onQueued: (() => void) | undefined
}

/** The log's side. */
export interface TurnLog {
  readonly pendingSteps: number
  flush: () => void
  flushAndSync: () => void
  writeDue: ((full: boolean) => void) | undefined
}

export class TurnEnd {
  private scheduled = false
  /** The write at the end of this turn was put off once already. */
  private putOff = false
  /** Pending steps whose callbacks were sent before they are written (a one-shot's begin and its prepares). */
  private sendsFirst = 0

  constructor (private readonly sender: CallbackSender, private readonly log: TurnLog) {
    sender.onQueued = () => { this.schedule() }
    log.writeDue = (full) => { if (full) this.write(); else this.schedule() }
  }

  /** A step was just saved whose callbacks go out before it is written. */
  noteSendsFirst (): void {
    this.sendsFirst++
  }

  private schedule (): void {
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => { this.run() })
  }

  private run (): void {
    this.scheduled = false
    if (this.log.pendingSteps === 0) {
      this.sender.flush()
      return
    }
    if (!this.putOff && this.sendsFirst > 0) {
      this.sender.flush()
      if (this.sender.takeSent()) {
        this.putOff = true
        this.schedule()
        return
      }
    }
    this.write()
  }

  /** The callbacks queued so far, then the log's write (which syncs forced steps at once). */
  write (): void {
    this.sendQueued()
    this.log.flush()
  }

  /** Everything queued and saved so far, written and synced, blocking (a graceful stop). */
  writeAndSync (): void {
    this.sendQueued()
    this.log.flushAndSync()
  }

  /** Before any write: the calls queued in this turn go out (their requests are asked about afresh next turn). */
  private sendQueued (): void {
    this.putOff = false
    this.sendsFirst = 0
    this.sender.flush()
    this.sender.takeSent()
  }
}
