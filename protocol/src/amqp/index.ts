export * from './link.js'
export * from './topology.js'
