/**
 * The environment each demo service reads, through ONE validated schema per service
 * (env-schema + TypeBox, like the coordinator). A bad value stops the service at start with a
 * message naming the variable. The accepted variable names are exported so that tests can
 * check that docker-compose.yml sets nothing a service would ignore.
 */
import envSchema from 'env-schema'
import { Type, type Static, type TObject, type TProperties } from '@sinclair/typebox'

export type ServiceName = 'order' | 'inventory' | 'payment'

export const DEFAULT_PORTS: Record<ServiceName, number> = { order: 3001, inventory: 3002, payment: 3003 }

/** Variables every demo service reads. */
function commonSchema (service: ServiceName) {
  return {
    PORT: Type.Integer({ minimum: 0, maximum: 65535, default: DEFAULT_PORTS[service] }),
    HOST: Type.String({ minLength: 1, default: '127.0.0.1' }),
    /** The service's own SQLite file (business tables + the SDK's participant log). */
    DB_PATH: Type.String({ minLength: 1, default: `./data/${service}.db` }),
    TWOPC_COORDINATOR_URL: Type.String({ pattern: '^https?://', default: 'http://127.0.0.1:7070' }),
    TWOPC_SECRET: Type.Optional(Type.String({ minLength: 16 })),
    TWOPC_API_TOKEN: Type.Optional(Type.String({ minLength: 16 })),
    AMQP_URL: Type.Optional(Type.String({ pattern: '^amqps?://' })),
    TWOPC_AMQP_PREFIX: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$', default: 'twopc' }),
    /** The SDK re-asks the coordinator about transactions prepared longer than this. */
    TWOPC_IN_DOUBT_AFTER_MS: Type.Integer({ minimum: 1, default: 10_000 }),
    LOG_LEVEL: Type.Union([
      Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'),
      Type.Literal('info'), Type.Literal('debug'), Type.Literal('trace'), Type.Literal('silent')
    ], { default: 'info' })
  }
}

const originPattern = '^https?://[^/?#]+$'

export const InventoryEnvSchema = Type.Object(commonSchema('inventory'))
export const PaymentEnvSchema = Type.Object(commonSchema('payment'))
export const OrderEnvSchema = Type.Object({
  ...commonSchema('order'),
  /** The origin the coordinator reaches THIS service at (its callbacks are `<origin>/2pc`). */
  ORDER_PUBLIC_URL: Type.Optional(Type.String({ pattern: originPattern })),
  /** Origins the coordinator reaches the participants at. */
  INVENTORY_URL: Type.String({ pattern: originPattern, default: 'http://127.0.0.1:3002' }),
  PAYMENT_URL: Type.String({ pattern: originPattern, default: 'http://127.0.0.1:3003' }),
  /** A distributed transaction's lifetime (the coordinator aborts it after). */
  ORDER_TIMEOUT_MS: Type.Integer({ minimum: 100, default: 10_000 }),
  /** Exchange (topic) `order.placed` messages go to, and the queue the service consumes them from. */
  DEMO_ORDERS_EXCHANGE: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$', default: 'demo.orders' }),
  DEMO_ORDER_PLACED_QUEUE: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$', default: 'demo.order-placed' })
})

export type InventoryEnv = Static<typeof InventoryEnvSchema>
export type PaymentEnv = Static<typeof PaymentEnvSchema>
export type OrderEnv = Static<typeof OrderEnvSchema>
export type ServiceEnv = InventoryEnv | PaymentEnv | OrderEnv

export const ENV_SCHEMAS = {
  order: OrderEnvSchema,
  inventory: InventoryEnvSchema,
  payment: PaymentEnvSchema
} as const

function keysOf (schema: TObject<TProperties>): readonly string[] {
  return Object.freeze(Object.keys(schema.properties))
}

/** Every environment variable each service accepts (its schema's keys). */
export const ACCEPTED_ENV: Readonly<Record<ServiceName, readonly string[]>> = Object.freeze({
  order: keysOf(OrderEnvSchema),
  inventory: keysOf(InventoryEnvSchema),
  payment: keysOf(PaymentEnvSchema)
})

/** Reads and validates the environment of one service; throws naming the variable. */
export function envFor (service: 'order', env?: NodeJS.ProcessEnv): OrderEnv
export function envFor (service: 'inventory' | 'payment', env?: NodeJS.ProcessEnv): InventoryEnv
export function envFor (service: ServiceName, env: NodeJS.ProcessEnv = process.env): ServiceEnv {
  // env-schema coerces strings to the schema's types; empty strings count as unset.
  const data = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''))
  return envSchema<ServiceEnv>({ schema: ENV_SCHEMAS[service], data, dotenv: false })
}
