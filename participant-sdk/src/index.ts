export { twoPhaseParticipant } from './participant.js'
export type { TwoPhaseParticipantApi } from './participant.js'
export type { TwoPhaseParticipantOptions, TwoPhaseParticipantStoreOptions, TwoPhaseParticipantRegisterOptions, ParticipantCommonOptions } from './participant-options.js'
export type { PrepareHandler, CommitHandler, AbortHandler, TransactionContext, PrepareContext, FlushStats } from './engine.js'
export type { InDoubtTransaction, RecoveryReport } from './recovery.js'
export { createCoordinatorClient, CoordinatorClient, CoordinatorTransaction, MAX_PARTICIPANTS_PER_TRANSACTION, MAX_MESSAGES_PER_TRANSACTION } from './client.js'
export type {
  CoordinatorClientOptions, BeginOptions, EnlistParticipant, TransactionalMessage,
  CommitOutcome, AbortOutcome, TransactionStatus
} from './client.js'
export { coordinatorClientPlugin } from './client-plugin.js'
export {
  CoordinatorError, TxUnknownError, TxAlreadyCommittedError, TxAlreadyAbortedError, BadSignatureError,
  ParticipantMismatchError, HandlerFailedError, InvalidOptionError, LogWriteFailedError, DatabaseNotDurableError
} from './errors.js'
export { transition, recoveryDelayMs } from './state-machine.js'
export type { RecordState, ParticipantEvent, Effect, Reply, Step, PrepareOutcome } from './state-machine.js'
export { migrate, PARTICIPANT_LOG_TABLE, SCHEMA_VERSION_TABLE, SchemaTooNewError, sqliteStore, SqliteStore } from './store/sqlite.js'
export type { ParticipantStore, ParticipantRecords, StoreTransaction, StoreCheck, LogRecord, MaybePromise } from './store/store.js'
export type { ParticipantAmqpOptions, ParticipantAmqpStatus } from './amqp.js'
export { parseTraceparent } from './trace.js'
