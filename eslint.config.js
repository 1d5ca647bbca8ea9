// The Fastify plugins' own lint style: neostandard (standard's rules in ESLint's flat config),
// with TypeScript support. `npm test` runs it; `npm run lint:fix` applies what it can fix.
import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    ignores: [
      '**/dist/**',
      '**/node_modules/**',
      'coverage/**',
      '.tap/**',
      'bench/.out/**'
    ]
  }),
  {
    rules: {
      // `void promise` marks a promise deliberately not awaited (hooks, fire-and-forget cleanup);
      // as a statement it is the idiom, elsewhere it stays an error.
      'no-void': ['error', { allowAsStatement: true }],
      // The rule takes any function named `callback` or `cb` for a Node error-first callback; the
      // code uses promises, and the tests' request helper for the coordinator's callbacks is
      // named `callback`, so every call to it was reported.
      'n/no-callback-literal': 'off'
    }
  },
  {
    files: ['**/*.ts'],
    rules: {
      // A TypeBox schema and its `Static<>` type share one name on purpose; the compiler
      // reports real redeclarations.
      '@typescript-eslint/no-redeclare': 'off'
    }
  },
  {
    files: ['*/src/metrics.ts'],
    rules: {
      // prom-client metrics register themselves in the registry given to their constructor.
      'no-new': 'off'
    }
  }
]
