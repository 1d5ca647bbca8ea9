export * from './signature.js'
export * from './wire.js'
export * from './crash.js'
export * from './amqp-names.js'
