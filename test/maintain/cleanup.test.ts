import {tmpdir} from 'node:os'

import {describe, expect, it} from 'vitest'

import {seedInconsistentPrekeys} from '../../scripts/maintain-fixture.mjs'
import {acquireCommandLock} from '../../src/migrations/command-lock.js'
import {resolveTarget} from '../../src/connection/target.js'
import {e2eScope, localArgs, parseJson, runCli} from '../helpers/cli.js'
import {ADMIN, connect} from '../helpers/fixture.js'
import {classCounts, migrateAndSeed, startKeyWriter} from '../helpers/maintain.js'

const {fresh} = e2eScope()
const LOCK_TIMEOUT = 200
// The writer runs with lock_timeout = LOCK_TIMEOUT itself (startKeyWriter): the server ends any of its statements
// that waits on a lock longer than that, so zero lock timeouts on the writer's side is "the writer never waited
// longer than the lock timeout", measured by the server on the writer's own waits, with no tolerance added.
const SIZE = {auditRows: 40_000, devices: 40, prekeysPerDevice: 50}

const cleanup = (db: string, ...extra: string[]) => runCli(['db', 'e2ee', 'maintain', 'cleanup', ...localArgs(db), ...extra])

describe('maintain cleanup', () => {
  it("deletes exactly the guide's rows in batches while a writer touches them, and a second run finds nothing", async () => {
    const db = await fresh()
    const expected = await migrateAndSeed(db.name, SIZE)
    const sql = connect(db.name)
    const odd = await seedInconsistentPrekeys(sql)
    await sql.end()
    const before = await classCounts(db.name)
    expect(before).toMatchObject({auditKeep: expected.auditKeep, auditOld: expected.auditDelete, prekeyOld: expected.prekeyDelete})

    // Batches that take longer than the lock timeout whatever the machine's speed: a delete trigger sleeps 5 ms on
    // every 200th row, so a batch of 20,000 rows lasts at least 500 ms. What keeps the writer under the lock
    // timeout is then the batch's own time limit and the halving, not a batch size small enough by luck.
    const slow = connect(db.name)
    await slow.unsafe(`
      create function test_slow_delete() returns trigger language plpgsql as $$
      begin
        if old.id % 200 = 0 then perform pg_sleep(0.005); end if;
        return old;
      end $$;
      create trigger test_slow_delete before delete on nchat_e2ee_audit_log for each row execute function test_slow_delete();`)
    await slow.end()

    // First prove the writer sees a holder longer than the lock timeout: a transaction keeping the next row
    // cleanup would take (the oldest old audit row) for three times the lock timeout.
    const probe = startKeyWriter(db.name, {lockTimeoutMs: LOCK_TIMEOUT})
    const holder = connect(db.name)
    await holder.begin(async (tx) => {
      await tx`select id from nchat_e2ee_audit_log where created_at < now() - interval '90 days' order by created_at limit 1 for update`
      await tx`select pg_sleep(${(3 * LOCK_TIMEOUT) / 1000})`
    })
    await holder.end()
    const probed = await probe.stop()
    expect(probed.lockTimeouts).toBeGreaterThan(0)

    const writer = startKeyWriter(db.name, {lockTimeoutMs: LOCK_TIMEOUT})
    await new Promise((r) => setTimeout(r, 300))
    const r = await cleanup(db.name, '--yes', '--json', '--batch-size', '20000', '--pause-ms', '5', '--lock-timeout', String(LOCK_TIMEOUT))
    const w = await writer.stop()
    expect(r.code, r.stderr).toBe(0)
    const doc = parseJson(r.stdout)
    expect(doc.ok).toBe(true)
    const byTable = Object.fromEntries(doc.tables.map((t: {table: string}) => [t.table, t]))
    expect(byTable.nchat_e2ee_audit_log.deleted).toBe(expected.auditDelete)
    expect(byTable.nchat_one_time_prekeys.deleted).toBe(expected.prekeyDelete)
    expect(byTable.nchat_e2ee_audit_log.batches).toBeGreaterThan(expected.auditDelete / 20_000)
    // The first batches ran into their time limit (half the lock timeout), were rolled back and retried smaller.
    expect(byTable.nchat_e2ee_audit_log.lockTimeouts).toBeGreaterThan(0)
    expect(doc.deleted).toBe(expected.auditDelete + expected.prekeyDelete)

    const after = await classCounts(db.name)
    expect(after.auditOld).toBe(0)
    expect(after.prekeyOld).toBe(0)
    expect(after.auditKeep).toBe(expected.auditKeep)
    expect(after.prekeyKeep).toBe(expected.prekeyKeep)
    expect(after.unconsumed).toBe(before.unconsumed)
    expect(after.auditNew).toBe(probed.inserted + w.inserted)
    // The prekeys whose columns disagree (consumed without a time, or unconsumed with an old time) are kept.
    const s2 = connect(db.name)
    const [{n}] = await s2<{n: number}[]>`select count(*)::int as n from nchat_one_time_prekeys where prekey_id > 1000000`
    await s2.end()
    expect(n).toBe(odd)

    expect(w.failures).toBe(0)
    expect(w.count).toBeGreaterThan(10)
    // The writer never waited on a lock longer than the lock timeout (see LOCK_TIMEOUT).
    expect(w.lockTimeouts).toBe(0)

    const again = await cleanup(db.name, '--yes', '--json')
    expect(again.code, again.stderr).toBe(0)
    expect(parseJson(again.stdout).tables.map((t: {matched: number}) => t.matched)).toEqual([0, 0])
  })

  it('takes rows just past the limits and keeps rows just inside them, with the limits from the flags', async () => {
    const db = await fresh()
    await migrateAndSeed(db.name, {auditRows: 0, devices: 1, prekeysPerDevice: 0})
    const sql = connect(db.name)
    // Ten minutes either side of each limit: a limit one day (or one hour) off in either direction moves a row
    // across it. 45 and 3 days, not the defaults, so a flag that is not applied fails too.
    await sql`insert into nchat_e2ee_audit_log (event_type, metadata, created_at) values
      ('session_established', '{"class": "past"}', now() - interval '45 days' - interval '10 minutes'),
      ('session_established', '{"class": "inside"}', now() - interval '45 days' + interval '10 minutes'),
      ('session_established', '{"class": "default-past"}', now() - interval '91 days')`
    await sql`insert into nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, is_consumed, consumed_at, created_at) values
      ('dev-1', 1, '\\x01', '\\x01', true, now() - interval '3 days' - interval '10 minutes', now() - interval '1 year'),
      ('dev-1', 2, '\\x02', '\\x02', true, now() - interval '3 days' + interval '10 minutes', now() - interval '1 year'),
      ('dev-1', 3, '\\x03', '\\x03', false, null, now() - interval '1 year')`
    await seedInconsistentPrekeys(sql, {prekeyDays: 3})
    const odd = (await sql<{id: number}[]>`select prekey_id as id from nchat_one_time_prekeys where prekey_id > 1000000 order by 1`).map((x) => x.id)

    const r = await cleanup(db.name, '--yes', '--json', '--audit-days', '45', '--prekey-days', '3')
    expect(r.code, r.stderr).toBe(0)
    const doc = parseJson(r.stdout)
    expect(doc.tables.map((t: {deleted: number}) => t.deleted)).toEqual([2, 1])
    const audit = await sql<{c: string}[]>`select metadata->>'class' as c from nchat_e2ee_audit_log order by 1`
    const prekeys = await sql<{id: number}[]>`select prekey_id as id from nchat_one_time_prekeys order by 1`
    await sql.end()
    expect(audit.map((x) => x.c)).toEqual(['inside'])
    expect(prekeys.map((x) => x.id)).toEqual([2, 3, ...odd])
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

    const firstDeleted = Number(/after deleting (\d+) row\(s\)/.exec(r.stderr)![1])
    expect(firstDeleted).toBe(expected.auditDelete - mid.auditOld)

    const rerun = await cleanup(db.name, '--yes', '--json')
    expect(rerun.code, rerun.stderr).toBe(0)
    expect(parseJson(rerun.stdout).deleted).toBe(mid.auditOld + mid.prekeyOld)
    expect(firstDeleted + parseJson(rerun.stdout).deleted).toBe(expected.auditDelete + expected.prekeyDelete)
    const after = await classCounts(db.name)
    expect(after).toMatchObject({auditKeep: expected.auditKeep, auditOld: 0, prekeyKeep: expected.prekeyKeep, prekeyOld: 0})
  })

  it('refuses a database without the 014 tables, and a run without --yes and no terminal', async () => {
    const db = await fresh()
    const r = await cleanup(db.name, '--yes')
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/The table public\.nchat_e2ee_audit_log does not exist, so there is nothing to clean up \(migration 014 is not applied\)\./)
    expect(r.stderr).not.toMatch(/\n\s+at /)
    const json = await cleanup(db.name, '--yes', '--json')
    expect(json.code).toBe(1)
    expect(parseJson(json.stdout)).toMatchObject({error: {message: expect.stringMatching(/nchat_e2ee_audit_log does not exist/)}, ok: false})
    const noYes = await cleanup(db.name)
    expect(noYes.code).toBe(2)
    expect(noYes.stderr).toMatch(/needs confirmation, and there is no terminal/)
  })

  it('refuses bad flags and a missing database in one sentence naming them, changing nothing, also with --json', async () => {
    const db = await fresh()
    await migrateAndSeed(db.name, {auditRows: 200, devices: 2, prekeysPerDevice: 10})
    const before = await classCounts(db.name)
    for (const [flag, value] of [
      ['--audit-days', '-1'],
      ['--prekey-days', '0'],
      ['--batch-size', '0'],
      ['--lock-timeout', '0'],
      ['--pause-ms', '-5'],
    ] as const) {
      const r = await cleanup(db.name, '--yes', '--json', `${flag}=${value}`)
      expect(r.code, `${flag} ${value}`).toBe(2)
      const doc = parseJson(r.stdout)
      expect(doc.ok).toBe(false)
      expect(doc.error.message).toContain(`Parsing ${flag}: Expected an integer greater than or equal to`)
      expect(r.stderr).not.toMatch(/\n\s+at /)
    }
    expect(await classCounts(db.name)).toEqual(before)

    const missing = `${db.name}_missing`
    const r = await cleanup(missing, '--yes', '--json')
    expect(r.code).toBe(1)
    expect(parseJson(r.stdout).error.message).toContain(`database "${missing}" does not exist`)
    expect(r.stderr).not.toMatch(/\n\s+at /)
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
