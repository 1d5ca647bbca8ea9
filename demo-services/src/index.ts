export { buildOrder } from './order.js'
export type { OrderServiceOptions, OrderRow } from './order.js'
export { buildInventory } from './inventory.js'
export type { StockRow } from './inventory.js'
export { buildPayment } from './payment.js'
export type { BalanceRow } from './payment.js'
export type { ServiceOptions } from './common.js'
export { PRICES, ORDER_PLACED } from './catalog.js'
export {
  ACCEPTED_ENV, DEFAULT_PORTS, ENV_SCHEMAS, envFor, OrderEnvSchema, InventoryEnvSchema, PaymentEnvSchema
} from './config.js'
export type { ServiceName, OrderEnv, InventoryEnv, PaymentEnv } from './config.js'
