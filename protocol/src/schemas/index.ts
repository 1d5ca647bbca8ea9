import type { TSchema } from '@sinclair/typebox'
import { CALLBACK_SCHEMAS } from './callbacks.js'
import { MESSAGE_SCHEMAS } from './messages.js'

export * from './callbacks.js'
export * from './messages.js'

/** Where the generated document lives in the repository. */
export const CALLBACK_SCHEMA_FILE = 'protocol/schema/callbacks.schema.json'

/**
 * The JSON Schema document (draft 2020-12) of every callback body and answer and every message
 * body, under `$defs`; a sub-schema equal to another definition is written as a `$ref` to it.
 * `npm run schema` writes it to {@link CALLBACK_SCHEMA_FILE}.
 */
export function callbackSchemaDocument (): Record<string, unknown> {
  const defs: Record<string, TSchema> = { ...CALLBACK_SCHEMAS, ...MESSAGE_SCHEMAS }
  const named = new Map<string, string>()
  for (const [name, schema] of Object.entries(defs)) named.set(JSON.stringify(schema), name)
  const $defs: Record<string, unknown> = {}
  for (const [name, schema] of Object.entries(defs)) $defs[name] = withRefs(schema, named, name)
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    title: 'fastify-2pc participant callbacks and messages',
    description: 'Generated from protocol/src/schemas (npm run schema); do not edit. ' +
      'x-json-limits on PrepareRequest.payload: the nesting depth and the keys plus array items the value may have at most (400 JSON_TOO_DEEP / JSON_TOO_MANY_KEYS).',
    $defs
  }
}

/** The file's text: the document, 2-space indented, ending with a newline. */
export function callbackSchemaText (): string {
  return JSON.stringify(callbackSchemaDocument(), null, 2) + '\n'
}

/** A plain copy of `schema`, with every sub-schema equal to a definition (other than `self`) as a `$ref`. */
function withRefs (schema: unknown, named: Map<string, string>, self?: string): unknown {
  if (Array.isArray(schema)) return schema.map(item => withRefs(item, named))
  if (schema === null || typeof schema !== 'object') return schema
  const ref = named.get(JSON.stringify(schema))
  if (ref !== undefined && ref !== self) return { $ref: `#/$defs/${ref}` }
  const copy: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(schema)) copy[key] = withRefs(value, named)
  return copy
}
