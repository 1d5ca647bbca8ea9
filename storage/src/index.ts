export * from './group-commit.js'
export * from './failure.js'
export * from './sync-placement.js'
export * from './crash.js'
