export * from './signature.js'
export * from './wire.js'
export * from './crash.js'
