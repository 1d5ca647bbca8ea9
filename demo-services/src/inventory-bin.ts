#!/usr/bin/env node
/** The inventory service of the demo: `node demo-services/dist/inventory-bin.js` (environment: config.ts). */
import { serve } from './serve.js'

await serve('inventory')
