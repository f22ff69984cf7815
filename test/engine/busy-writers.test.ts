import {readFileSync, writeFileSync} from 'node:fs'
import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import postgres from 'postgres'
import {afterEach, describe, expect, it} from 'vitest'

import {loadMigrations} from '../../src/migrations/files.js'
import {lockWaitError} from '../../src/migrations/locks.js'
import {migrateUp} from '../../src/migrations/runner.js'
import {copyMigrations, engineSql, packaged} from '../helpers/engine.js'
import {ADMIN, connect, createV030Database, type V030Database} from '../helpers/fixture.js'
import {type BusyWriterResult, startBusyWriters} from '../helpers/writer.js'

const LOCK_TIMEOUT = 200
const MAX_LOCK_WAIT = 30_000
/**
 * A writer may wait for at most two of our lock requests (nchat_messages, then nchat_channels), each bounded by
 * the lock timeout, plus the rest of 014's transaction once it holds them (a few ALTERs, the ledger rows and the
 * commit: tens of ms idle). 600 ms is for that on a loaded 2-core machine. On such a machine a single insert
 * (its commit's fsync) can also stall by itself for hundreds of ms with no migration running, so the longest
 * wait the same writers saw in the second before the migration is added: the bound is about what the
 * migration adds, not about how busy the machine happens to be.
 */
const WRITER_MARGIN = 2 * LOCK_TIMEOUT + 600

const dbs: V030Database[] = []
afterEach(async () => {
  while (dbs.length) await dbs.pop()!.drop()
})

describe('busy writers during the migration (issue 9, defect 1)', () => {
  it('six writers inserting flat out: 013-016 complete, no insert fails or is lost, and none waits much longer than the lock timeout', async () => {
    const db = await createV030Database({messages: 20_000})
    dbs.push(db)
    const sql = engineSql(db.name)
    const logs: string[] = []
    // 20 ms: a writer caught in a lock cycle detects it long before the migration's 200 ms lock_timeout.
    const writers = startBusyWriters(db.name, {connections: 6, deadlockTimeoutMs: 20, slowMs: LOCK_TIMEOUT, tag: 'busy write'})
    let run: Awaited<ReturnType<typeof migrateUp>>
    let w: BusyWriterResult
    let migrationMs = 0
    let migrationStart = 0
    try {
      await sleep(1000)
      migrationStart = performance.now()
      const t0 = Date.now()
      run = await migrateUp({lockTimeoutMs: LOCK_TIMEOUT, log: (l) => logs.push(l), maxLockWaitMs: MAX_LOCK_WAIT, migrations: packaged(), sql})
      migrationMs = Date.now() - t0
      await sleep(300)
    } finally {
      w = await writers.stop()
      await sql.end()
    }
    const check = connect(db.name)
    const [{rows}] = await check<{rows: number}[]>`select count(*)::int as rows from nchat_messages where content = 'busy write'`
    await check.end()
    const before = Math.max(0, ...w.samples.filter(([t]) => t < migrationStart).map(([, ms]) => ms))
    const during = Math.max(0, ...w.samples.filter(([t]) => t >= migrationStart).map(([, ms]) => ms))
    const show = JSON.stringify({
      ...w,
      before,
      during,
      samples: w.samples.length,
      lockRetries: run.migrations.map((m) => `${m.name}: ${m.lockRetries}`),
      log: logs.filter((l) => /lock|deadlock/.test(l)),
      migrationMs,
    })

    expect(run.after, show).toBe(16)
    expect(migrationMs, show).toBeLessThan(MAX_LOCK_WAIT)
    // The writers really were busy throughout (hundreds of inserts a second even on a loaded machine).
    expect(w.committed, show).toBeGreaterThan(200)
    // No insert was a deadlock victim or failed otherwise, and every committed insert is there.
    expect(w.errors, show).toEqual({})
    expect(rows, show).toBe(w.committed)
    expect(during, show).toBeLessThan(WRITER_MARGIN + before)
  })
})

/** A session of its own on `database`, with its own deadlock_timeout. */
function session(database: string, deadlockTimeout: string) {
  return postgres({
    ...ADMIN,
    connection: {application_name: 'nself-e2ee-tests-holder', deadlock_timeout: deadlockTimeout},
    database,
    max: 1,
    onnotice: () => {},
  })
}

async function until(what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

describe('lock conflicts the runner retries, and what it says when it gives up', () => {
  it("a deadlock that hits the migration's own transaction is rolled back and retried, and the writer in the cycle goes on", async () => {
    const db = await createV030Database()
    dbs.push(db)
    const setup = engineSql(db.name)
    await migrateUp({log: () => {}, migrations: packaged(), sql: setup, to: 13})
    await setup.end()
    // The old lock order (nchat_channels first), and a deadlock_timeout (1 s) below the lock timeout (10 s) for
    // the migration's sessions: the server then picks the migration as the victim of the cycle made below.
    const copy = copyMigrations()
    const file = path.join(copy.dir, '014_e2ee_system.sql')
    writeFileSync(
      file,
      readFileSync(file, 'utf8').replace(/^ALTER TABLE nchat_messages\n/m, 'LOCK TABLE nchat_channels IN ACCESS EXCLUSIVE MODE;\nALTER TABLE nchat_messages\n'),
    )
    const admin = connect(db.name)
    await admin.unsafe(`ALTER DATABASE "${db.name}" SET deadlock_timeout = '1s'`)
    const sql = engineSql(db.name)
    const writer = session(db.name, '60s')
    const logs: string[] = []
    const w = await writer.reserve()
    let read: Promise<unknown> | undefined
    try {
      await w.unsafe('begin')
      await w.unsafe('lock table nchat_messages in row exclusive mode')
      const run = migrateUp({lockTimeoutMs: 10_000, log: (l) => logs.push(l), maxLockWaitMs: 60_000, migrations: loadMigrations(copy.dir), sql})
      run.catch(() => {})
      // The migration holds nchat_channels and waits for nchat_messages; the writer now needs nchat_channels.
      await until(
        'the migration to wait for nchat_messages',
        async () =>
          (
            await admin<{n: number}[]>`
        select count(*)::int as n from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'nchat_messages' and not l.granted`
          )[0].n > 0,
      )
      read = w.unsafe('select count(*) from nchat_channels').then(() => w.unsafe('commit'))
      const report = await run
      // The writer's read waited for the migration's rollback, then went on: no error.
      await read
      expect(report.after).toBe(16)
      expect(report.migrations.find((m) => m.version === 14)!.lockRetries).toBeGreaterThanOrEqual(1)
      expect(
        logs.some((l) => /deadlock/.test(l)),
        logs.join('\n'),
      ).toBe(true)
    } finally {
      await (read ?? w.unsafe('rollback')).catch(() => {})
      w.release()
      copy.cleanup()
      await Promise.all([sql.end(), writer.end()])
      await admin.end()
    }
  })

  it('gives up naming no long transaction when one short transaction after another held the table', async () => {
    const db = await createV030Database()
    dbs.push(db)
    const sql = engineSql(db.name)
    await migrateUp({log: () => {}, migrations: packaged(), sql, to: 13})
    // Two sessions, each in 600 ms transactions holding ROW EXCLUSIVE on nchat_messages, 300 ms apart: at every
    // moment one of them has been open for more than the 200 ms lock timeout, none for long.
    const holders = [session(db.name, '1s'), session(db.name, '1s')]
    let running = true
    const loops = holders.map(async (h, i) => {
      await sleep(i * 300)
      while (running)
        await h.begin(async (tx) => {
          await tx.unsafe('lock table nchat_messages in row exclusive mode')
          await tx.unsafe('select pg_sleep(0.6)')
        })
    })
    try {
      await sleep(700)
      const err = await migrateUp({lockTimeoutMs: LOCK_TIMEOUT, log: () => {}, maxLockWaitMs: 3000, migrations: packaged(), sql}).catch((e) => e)
      expect(err).toBeInstanceOf(Error)
      // Whether the wait ran out before an attempt or in one, the sentence blames short transactions, not a long one.
      expect(err.message).toMatch(
        /^Migration 014_e2ee_system could not get its locks within \d+ s \(--max-lock-wait(; \d+ lock timeouts? of 200 ms at .*)?\): other sessions' short transactions held the tables one after another \((the latest: pid \d+ \(transaction open \d+(\.\d)? s on nchat_messages: .*\)|none open longer than 200 ms when checked)\), so there is no long transaction to end; nothing of the migration was applied\.$/,
      )
      expect(err.message + err.hint).not.toMatch(/Find long transactions|pg_terminate_backend/)
      const [{v}] = await sql<{v: number}[]>`select max(version)::int as v from schema_migrations`
      expect(v).toBe(13)
    } finally {
      running = false
      await Promise.all(loops)
      await Promise.all([sql.end(), ...holders.map((h) => h.end())])
    }
  })

  it('the give-up sentence blames short transactions when no long one holds the tables, and names the one that does', async () => {
    const db = await createV030Database()
    dbs.push(db)
    const sql = connect(db.name)
    const holder = session(db.name, '1s')
    let h: postgres.ReservedSql | undefined
    const opts = {lockTimeoutMs: 200, migration: '014_e2ee_system'}
    const at = 'ALTER TABLE nchat_messages ADD COLUMN IF NOT EXISTS is_encrypted BOOLEAN NOT NULL DEFAULT FALSE'
    try {
      const none = await lockWaitError(sql, 'public', ['nchat_messages', 'nchat_channels'], {...opts, waitedMs: 90_000}, {at, deadlocks: 2, timeouts: 63})
      expect(none.message).toBe(
        'Migration 014_e2ee_system could not get its locks within 90 s (--max-lock-wait; 63 lock timeouts of 200 ms and 2 deadlocks at ALTER TABLE nchat_messages ADD COLUMN IF NOT EXISTS is_encrypted BOOLEAN NOT NULL DEFAULT FALSE): '
          + "other sessions' short transactions held the tables one after another (none open longer than 200 ms when checked), so there is no long transaction to end; nothing of the migration was applied.",
      )
      expect(none.hint).toMatch(/raise --lock-timeout/)
      h = await holder.reserve()
      const [{pid}] = await h.unsafe<{pid: number}[]>('select pg_backend_pid() as pid')
      await h.unsafe('begin')
      await h.unsafe('select count(*) from nchat_messages')
      await sleep(1200)
      // Open 1.2 s: short against a 90 s wait, long against a 2 s one.
      const short = await lockWaitError(sql, 'public', ['nchat_messages', 'nchat_channels'], {...opts, waitedMs: 90_000}, {at, deadlocks: 0, timeouts: 1})
      expect(short.message).toMatch(
        new RegExp(
          `\\(the latest: pid ${pid} \\(transaction open \\d+(\\.\\d)? s on nchat_messages: select count\\(\\*\\) from nchat_messages\\)\\), so there is no long transaction to end`,
        ),
      )
      const named = await lockWaitError(sql, 'public', ['nchat_messages', 'nchat_channels'], {...opts, waitedMs: 2000}, {at, deadlocks: 0, timeouts: 1})
      expect(named.message).toMatch(
        new RegExp(
          `^Migration 014_e2ee_system could not get its locks within 2 s \\(--max-lock-wait; 1 lock timeout of 200 ms at ALTER TABLE .*\\): the long transaction pid ${pid} \\(transaction open \\d+(\\.\\d)? s on nchat_messages: select count\\(\\*\\) from nchat_messages\\) is in the way; nothing of the migration was applied\\.$`,
        ),
      )
      expect(named.hint).toContain(`pg_terminate_backend(${pid})`)
    } finally {
      await h?.unsafe('commit')
      h?.release()
      await Promise.all([sql.end(), holder.end()])
    }
  })
})
