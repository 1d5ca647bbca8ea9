// Writes protocol/schema/callbacks.schema.json from the built TypeBox schemas (`npm run schema`
// builds the protocol first). protocol/test/schema-file.test.ts fails when the committed file differs.
import { writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { callbackSchemaText, CALLBACK_SCHEMA_FILE } from '../dist/schemas/index.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
writeFileSync(root + CALLBACK_SCHEMA_FILE, callbackSchemaText())
console.log(`wrote ${CALLBACK_SCHEMA_FILE}`)
