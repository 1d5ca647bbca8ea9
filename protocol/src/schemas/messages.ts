/**
 * The RabbitMQ message bodies (JSON, content type application/json; README, "RabbitMQ"): what
 * the coordinator and the participants publish to each other. Unknown fields are ignored.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { Decision, ParticipantName } from './callbacks.js'

/** A transaction id as a message carries it: checked as a short string (the reader decides more). */
const MessageTxId = Type.String({ minLength: 1, maxLength: 1024 })

/** Coordinator -> participant, on `<prefix>.decisions` with routing key `participant.<name>`. */
export const DecisionNotice = Type.Object({ txid: MessageTxId, participant: ParticipantName, decision: Decision }, {
  description: 'coordinator -> participant, on <prefix>.decisions, routing key participant.<name>'
})
export type DecisionNotice = Static<typeof DecisionNotice>

/** Participant -> coordinator, on `<prefix>.acks`: the participant applied `decision`. */
export const AckNotice = Type.Object({ txid: MessageTxId, participant: ParticipantName, decision: Decision }, {
  description: 'participant -> coordinator, on <prefix>.acks: the participant applied the decision'
})
export type AckNotice = Static<typeof AckNotice>

/** Coordinator -> everyone, on `<prefix>.events`, after its recovery finished. */
export const CoordinatorStarted = Type.Object({
  type: Type.Literal('coordinator.started'),
  coordinatorId: Type.String({ minLength: 1, maxLength: 1024 }),
  at: Type.Number({ minimum: 0, description: 'Unix ms' })
}, { description: 'coordinator -> everyone, on <prefix>.events, after its recovery finished' })
export type CoordinatorStarted = Static<typeof CoordinatorStarted>

/** The message bodies by name (in the generated file's `$defs` too). */
export const MESSAGE_SCHEMAS: Readonly<Record<string, TSchema>> = { DecisionNotice, AckNotice, CoordinatorStarted }
