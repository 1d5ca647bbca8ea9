#!/usr/bin/env node
/** The payment service of the demo: `node demo-services/dist/payment-bin.js` (environment: config.ts). */
import { serve } from './serve.js'

await serve('payment')
