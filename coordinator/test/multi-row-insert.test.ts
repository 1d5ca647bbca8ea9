import t from 'tap'
import Database from 'better-sqlite3'
import { MultiRowInsert } from '../src/log/sqlite/operator-tables.js'

t.test('MultiRowInsert writes every row added, in order, in power-of-two chunks', async t => {
  const db = new Database(':memory:')
  t.teardown(() => db.close())
  db.exec('CREATE TABLE r (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, n INTEGER NOT NULL, label TEXT)')
  const rows = new MultiRowInsert(db, 'INSERT INTO r (batch, n, label) VALUES', '', 3, 32)
  const prepares: string[] = []
  const prepare = db.prepare.bind(db)
  ;(db as unknown as { prepare: (sql: string) => unknown }).prepare = (sql: string) => { prepares.push(sql); return prepare(sql) }
  for (const size of [0, 1, 2, 3, 31, 32, 33, 37, 70]) {
    for (let n = 0; n < size; n++) rows.add(size, n, n % 3 === 0 ? null : `row ${n}`)
    t.equal(rows.size, size)
    rows.flush()
    t.equal(rows.size, 0, 'emptied by the flush')
    const written = db.prepare<[number], { n: number, label: string | null }>('SELECT n, label FROM r WHERE batch = ? ORDER BY id').all(size)
    t.same(written.map(w => w.n), Array.from({ length: size }, (_, n) => n), `batch of ${size}: every row, in order`)
    t.same(written.map(w => w.label), Array.from({ length: size }, (_, n) => n % 3 === 0 ? null : `row ${n}`))
  }
  const sizes = prepares.filter(sql => sql.startsWith('INSERT')).map(sql => sql.split('(?, ?, ?)').length - 1)
  t.same([...new Set(sizes)].sort((a, b) => a - b), [1, 2, 4, 8, 16, 32], 'one statement per power of two, prepared once each')

  rows.add(1, 1, 'left over')
  rows.clear()
  rows.flush()
  t.equal(db.prepare('SELECT count(*) AS c FROM r WHERE label = ?').pluck().get('left over'), 0, 'clear drops what was added')
})
