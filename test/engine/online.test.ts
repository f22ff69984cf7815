import {execFile} from 'node:child_process'
import {setTimeout as sleep} from 'node:timers/promises'
import {promisify} from 'node:util'
import postgres from 'postgres'
import {afterEach, describe, expect, it} from 'vitest'

import {migrateUp} from '../../src/migrations/runner.js'
import {ADMIN, createV030Database, type V030Database} from '../helpers/fixture.js'
import {engineSql, packaged} from '../helpers/engine.js'
import {holdLongRead, startWriter} from '../helpers/writer.js'

const execFileP = promisify(execFile)
const LOCK_TIMEOUT = 200
// The writer's own lock_timeout: an insert that waits for a lock longer than the migration's lock timeout plus
// this margin fails and is counted. lock_timeout measures lock waits only, so a slow, busy machine does not
// count (a wall-clock bound on insert latency did: defect 10 of issue 9).
const MARGIN = 1000
const WRITER_LOCK_TIMEOUT = LOCK_TIMEOUT + MARGIN
const READ_MS = 3000

/** Wait until the writer has written (and keeps writing): no fixed sleep. */
async function writing(w: {latencies: number[]}, n = 3): Promise<void> {
  const from = w.latencies.length
  while (w.latencies.length < from + n) await sleep(5)
}

const dbs: V030Database[] = []
afterEach(async () => {
  while (dbs.length) await dbs.pop()!.drop()
})

describe('writers while the migration runs next to a long read transaction (D5)', () => {
  it('no insert into nchat_messages waits longer than the lock timeout plus a margin', async () => {
    const db = await createV030Database({messages: 20_000})
    dbs.push(db)
    const sql = engineSql(db.name)
    const logs: string[] = []
    try {
      await migrateUp({log: () => {}, migrations: packaged(), sql, to: 13})
      const writer = startWriter(db.name, 'public', 10, {lockTimeoutMs: WRITER_LOCK_TIMEOUT})
      await writing(writer)
      const reader = await holdLongRead(db.name, READ_MS)
      const t0 = Date.now()
      const during = writer.latencies.length
      const run = await migrateUp({lockTimeoutMs: LOCK_TIMEOUT, log: (l) => logs.push(l), migrations: packaged(), sql})
      const migrationMs = Date.now() - t0
      const writtenDuring = writer.latencies.length - during
      await reader.done
      await writing(writer)
      const w = await writer.stop()
      console.log(
        `writers beside the migration: ${w.count} inserts, longest ${Math.round(w.maxMs)} ms (wall clock), ${w.lockTimeouts} lock waits over ${WRITER_LOCK_TIMEOUT} ms`,
      )
      expect(run.after).toBe(16)
      // The migration had to wait for the reader (so the scenario really happened) ...
      expect(migrationMs).toBeGreaterThan(READ_MS - 1000)
      expect(logs.some((l) => /waiting, without taking any lock/.test(l))).toBe(true)
      // ... the writer kept writing while it waited ...
      expect(writtenDuring).toBeGreaterThan(0)
      // ... and no insert waited for a lock longer than the lock timeout plus the margin.
      expect(w.failures).toBe(0)
      expect(w.lockTimeouts).toBe(0)
    } finally {
      await sql.end()
    }
  })

  it("the guide's plain ALTER TABLE stalls every writer behind the same long read (the measurement can fail)", async () => {
    const db = await createV030Database({messages: 20_000})
    dbs.push(db)
    const writer = startWriter(db.name, 'public', 10, {lockTimeoutMs: WRITER_LOCK_TIMEOUT})
    await writing(writer)
    // The long read stays open until the guide's ALTER TABLE is queued behind it and then until a writer has
    // waited longer than the bound, or READ_MS has passed: a slow machine cannot end the read before the ALTER
    // arrives (which would make the stall vanish), and a method that does not stall writers fails.
    const reader = postgres({...ADMIN, database: db.name, max: 1, onnotice: () => {}})
    const read = await reader.reserve()
    await read.unsafe('begin')
    await read.unsafe('select count(*) from nchat_messages')
    const alter = execFileP('psql', [
      '-X',
      '-q',
      '-h',
      ADMIN.host,
      '-p',
      String(ADMIN.port),
      '-U',
      ADMIN.user,
      '-d',
      db.name,
      '-c',
      'ALTER TABLE nchat_messages ADD COLUMN IF NOT EXISTS is_encrypted BOOLEAN NOT NULL DEFAULT FALSE',
    ])
    // Asked on the reader's own session (its pool has one connection, reserved): pg_locks is live, not snapshot-bound.
    const queued = async () =>
      (
        await read<{n: number}[]>`select count(*)::int as n from pg_locks
      where relation = 'nchat_messages'::regclass and mode = 'AccessExclusiveLock' and not granted`
      )[0].n > 0
    while (!(await queued())) await sleep(10)
    const until = Date.now() + READ_MS
    while (writer.lockTimeouts === 0 && Date.now() < until) await sleep(10)
    await read.unsafe('commit')
    read.release()
    await reader.end()
    await alter
    await writing(writer)
    const w = await writer.stop()
    // The same writer, the same bound: behind the guide's ALTER TABLE inserts waited for a lock longer than
    // the lock timeout plus the margin (and failed with lock_timeout where an application would hang).
    expect(w.lockTimeouts).toBeGreaterThan(0)
    expect(w.failures).toBe(0)
  })
})
