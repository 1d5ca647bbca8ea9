// The coordinator exactly as `twopc-coordinator` runs it (coordinator/dist/bin.js, configured by
// the environment), plus the bench's watchdog so it never outlives the bench.
import './watchdog.mjs'
import './loop-delay.mjs'
await import('../../coordinator/dist/bin.js')
