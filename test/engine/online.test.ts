import {execFile} from 'node:child_process'
import {promisify} from 'node:util'
import {afterEach, describe, expect, it} from 'vitest'

import {migrateUp} from '../../src/migrations/runner.js'
import {ADMIN, createV030Database, type V030Database} from '../helpers/fixture.js'
import {engineSql, packaged} from '../helpers/engine.js'
import {holdLongRead, startWriter} from '../helpers/writer.js'

const execFileP = promisify(execFile)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const LOCK_TIMEOUT = 200
const MARGIN = 400
const READ_MS = 3000

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
      const writer = startWriter(db.name)
      await sleep(200)
      const reader = await holdLongRead(db.name, READ_MS)
      await sleep(200)
      const t0 = Date.now()
      const run = await migrateUp({lockTimeoutMs: LOCK_TIMEOUT, log: (l) => logs.push(l), migrations: packaged(), sql})
      const migrationMs = Date.now() - t0
      await reader.done
      await sleep(200)
      const w = await writer.stop()
      expect(run.after).toBe(16)
      // The migration had to wait for the reader (so the scenario really happened) ...
      expect(migrationMs).toBeGreaterThan(READ_MS - 1000)
      expect(logs.some((l) => /waiting, without taking any lock/.test(l))).toBe(true)
      // ... and writers never queued behind it for longer than the lock timeout.
      expect(w.failures).toBe(0)
      expect(w.count).toBeGreaterThan(50)
      expect(w.maxMs).toBeLessThan(LOCK_TIMEOUT + MARGIN)
    } finally {
      await sql.end()
    }
  })

  it('the guide\'s plain ALTER TABLE stalls every writer behind the same long read (the measurement can fail)', async () => {
    const db = await createV030Database({messages: 20_000})
    dbs.push(db)
    const writer = startWriter(db.name)
    await sleep(200)
    const reader = await holdLongRead(db.name, READ_MS)
    await sleep(200)
    await execFileP('psql', ['-X', '-q', '-h', ADMIN.host, '-U', ADMIN.user, '-d', db.name, '-c', 'ALTER TABLE nchat_messages ADD COLUMN IF NOT EXISTS is_encrypted BOOLEAN NOT NULL DEFAULT FALSE'])
    await reader.done
    await sleep(200)
    const w = await writer.stop()
    expect(w.maxMs).toBeGreaterThan(READ_MS - 1000)
  })
})
