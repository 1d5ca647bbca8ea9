export * from './link.js'
export * from './topology.js'
export * from './signing.js'
