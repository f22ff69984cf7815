import {tmpdir} from 'node:os'

import {describe, expect, it} from 'vitest'

import {seedInconsistentPrekeys} from '../../scripts/maintain-fixture.mjs'
import {batchTimeoutMs} from '../../src/maintain/cleanup.js'
import {acquireCommandLock} from '../../src/migrations/command-lock.js'
import {resolveTarget} from '../../src/target/target.js'
import {e2eScope, localArgs, parseJson, runCli} from '../helpers/cli.js'
import {ADMIN, connect} from '../helpers/fixture.js'
import {classCounts, migrateAndSeed, startKeyWriter} from '../helpers/maintain.js'

const {fresh} = e2eScope()
const LOCK_TIMEOUT = 200
// A batch's statement_timeout (batchTimeoutMs: twice the lock timeout, at least 400 ms) is the longest any writer can wait on rows it holds.
// The margin covers a busy 2-core machine (scheduling, commit flush); the guide's single DELETE of the same rows
// holds them for its whole run (see bench scenario 7).
const WRITER_BOUND_MS = batchTimeoutMs(LOCK_TIMEOUT) + 1500
const SIZE = {auditRows: 40_000, devices: 40, prekeysPerDevice: 50}

const cleanup = (db: string, ...extra: string[]) => runCli(['db', 'e2ee', 'maintain', 'cleanup', ...localArgs(db), ...extra])

describe('maintain cleanup', () => {
  it('deletes exactly the guide\'s rows in batches while a writer touches them, and a second run finds nothing', async () => {
    const db = await fresh()
    const expected = await migrateAndSeed(db.name, SIZE)
    const sql = connect(db.name)
    const odd = await seedInconsistentPrekeys(sql)
    await sql.end()
    const before = await classCounts(db.name)
    expect(before).toMatchObject({auditKeep: expected.auditKeep, auditOld: expected.auditDelete, prekeyOld: expected.prekeyDelete})

    const writer = startKeyWriter(db.name)
    await new Promise((r) => setTimeout(r, 300))
    const r = await cleanup(db.name, '--yes', '--json', '--batch-size', '500', '--pause-ms', '5', '--lock-timeout', String(LOCK_TIMEOUT))
    const w = await writer.stop()
    expect(r.code, r.stderr).toBe(0)
    const doc = parseJson(r.stdout)
    expect(doc.ok).toBe(true)
    const byTable = Object.fromEntries(doc.tables.map((t: {table: string}) => [t.table, t]))
    expect(byTable.nchat_e2ee_audit_log.deleted).toBe(expected.auditDelete)
    expect(byTable.nchat_one_time_prekeys.deleted).toBe(expected.prekeyDelete)
    expect(byTable.nchat_e2ee_audit_log.batches).toBeGreaterThan(expected.auditDelete / 500 - 1)
    expect(doc.deleted).toBe(expected.auditDelete + expected.prekeyDelete)

    const after = await classCounts(db.name)
    expect(after.auditOld).toBe(0)
    expect(after.prekeyOld).toBe(0)
    expect(after.auditKeep).toBe(expected.auditKeep)
    expect(after.prekeyKeep).toBe(expected.prekeyKeep)
    expect(after.unconsumed).toBe(before.unconsumed)
    expect(after.auditNew).toBe(w.inserted)
    // The prekeys whose columns disagree (consumed without a time, or unconsumed with an old time) are kept.
    const s2 = connect(db.name)
    const [{n}] = await s2<{n: number}[]>`select count(*)::int as n from nchat_one_time_prekeys where prekey_id > 1000000`
    await s2.end()
    expect(n).toBe(odd)

    expect(w.failures).toBe(0)
    expect(w.count).toBeGreaterThan(10)
    expect(w.maxMs).toBeLessThan(WRITER_BOUND_MS)

    const again = await cleanup(db.name, '--yes', '--json')
    expect(again.code, again.stderr).toBe(0)
    expect(parseJson(again.stdout).tables.map((t: {matched: number}) => t.matched)).toEqual([0, 0])
  })

  it('--dry-run counts and changes nothing', async () => {
    const db = await fresh()
    const expected = await migrateAndSeed(db.name, {auditRows: 2000, devices: 5, prekeysPerDevice: 20})
    const before = await classCounts(db.name)
    const r = await cleanup(db.name, '--dry-run', '--json')
    expect(r.code, r.stderr).toBe(0)
    const doc = parseJson(r.stdout)
    expect(doc.dryRun).toBe(true)
    expect(doc.deleted).toBe(0)
    expect(doc.tables.map((t: {matched: number}) => t.matched)).toEqual([expected.auditDelete, expected.prekeyDelete])
    expect(await classCounts(db.name)).toEqual(before)

    const human = await cleanup(db.name, '--dry-run', '--audit-days', '1', '--prekey-days', '1')
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/Dry run: \d+ row\(s\) would be deleted; nothing was changed/)
    expect(await classCounts(db.name)).toEqual(before)
  })

  it('Ctrl+C stops between batches with exit 130, keeping what was deleted; a rerun finishes the job', async () => {
    const db = await fresh()
    const expected = await migrateAndSeed(db.name, {auditRows: 30_000, devices: 5, prekeysPerDevice: 20})
    const r = await runCli(['db', 'e2ee', 'maintain', 'cleanup', ...localArgs(db.name), '--yes', '--batch-size', '100', '--pause-ms', '40'], {
      interruptWhen: (out) => /nchat_e2ee_audit_log: [1-9]\d* \/ ~\d+ deleted/.test(out),
    })
    expect(r.interrupted).toBe(true)
    expect(r.code, r.stderr).toBe(130)
    expect(r.stderr).toMatch(/Interrupted: cleanup stopped by Ctrl\+C after deleting \d+ row\(s\)/)
    const mid = await classCounts(db.name)
    expect(mid.auditOld).toBeGreaterThan(0)
    expect(mid.auditOld).toBeLessThan(expected.auditDelete)
    expect(mid.auditKeep).toBe(expected.auditKeep)

    const rerun = await cleanup(db.name, '--yes', '--json')
    expect(rerun.code, rerun.stderr).toBe(0)
    expect(parseJson(rerun.stdout).deleted).toBe(mid.auditOld + mid.prekeyOld)
    const after = await classCounts(db.name)
    expect(after).toMatchObject({auditKeep: expected.auditKeep, auditOld: 0, prekeyKeep: expected.prekeyKeep, prekeyOld: 0})
  })

  it('refuses a database without the 014 tables, and a run without --yes and no terminal', async () => {
    const db = await fresh()
    const r = await cleanup(db.name, '--yes')
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/The table public\.nchat_e2ee_audit_log does not exist, so there is nothing to clean up \(migration 014 is not applied\)\./)
    const noYes = await cleanup(db.name)
    expect(noYes.code).toBe(2)
    expect(noYes.stderr).toMatch(/needs confirmation, and there is no terminal/)
    const bad = await cleanup(db.name, '--yes', '--audit-days', '0')
    expect(bad.code).toBe(2)
  })

  it('waits for another command changing the database (the cross-command lock), then refuses naming it', async () => {
    const db = await fresh()
    await migrateAndSeed(db.name, {auditRows: 100, devices: 2, prekeysPerDevice: 10})
    const target = resolveTarget({database: db.name, host: ADMIN.host, local: true, port: ADMIN.port, projectDir: tmpdir(), user: ADMIN.user})
    const lock = await acquireCommandLock(target, {command: 'migrate', waitMs: 0})
    try {
      const before = await classCounts(db.name)
      const r = await cleanup(db.name, '--yes', '--lock-wait', '1')
      expect(r.code).toBe(1)
      expect(r.stderr).toMatch(/Another command \(nself db e2ee migrate, pid \d+/)
      expect(await classCounts(db.name)).toEqual(before)
    } finally {
      await lock.release()
    }
  })
})
