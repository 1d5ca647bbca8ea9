export * from './signature.js'
export * from './wire.js'
