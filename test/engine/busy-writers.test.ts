import {afterEach, describe, expect, it} from 'vitest'

import {migrateUp} from '../../src/migrations/runner.js'
import {engineSql, packaged} from '../helpers/engine.js'
import {connect, createV030Database, type V030Database} from '../helpers/fixture.js'
import {type BusyWriterResult, startBusyWriters} from '../helpers/writer.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const LOCK_TIMEOUT = 200
const MAX_LOCK_WAIT = 30_000
/**
 * A writer may wait for at most two of our lock requests (nchat_messages, then nchat_channels), each bounded by
 * the lock timeout, plus the rest of 014's transaction once it holds them (a few ALTERs and the ledger rows: tens
 * of ms idle). The margin is for that and for a loaded 2-core machine where several test files run at once.
 */
const WRITER_BOUND = 2 * LOCK_TIMEOUT + 600

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
    try {
      await sleep(300)
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
    const show = JSON.stringify({...w, lockRetries: run.migrations.map((m) => `${m.name}: ${m.lockRetries}`), log: logs.filter((l) => /lock|deadlock/.test(l)), migrationMs})

    expect(run.after, show).toBe(16)
    expect(migrationMs, show).toBeLessThan(MAX_LOCK_WAIT)
    // The writers really were busy throughout (hundreds of inserts a second even on a loaded machine).
    expect(w.committed, show).toBeGreaterThan(200)
    // No insert was a deadlock victim or failed otherwise, and every committed insert is there.
    expect(w.errors, show).toEqual({})
    expect(rows, show).toBe(w.committed)
    expect(w.maxMs, show).toBeLessThan(WRITER_BOUND)
  })
})
