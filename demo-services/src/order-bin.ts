#!/usr/bin/env node
/** The order service of the demo: `node demo-services/dist/order-bin.js` (environment: config.ts). */
import { serve } from './serve.js'

await serve('order')
