import {readFileSync} from 'node:fs'
import {setTimeout as sleep} from 'node:timers/promises'

import {describe, expect, it} from 'vitest'

import {loadMigrations} from '../../src/migrations/files.js'
import {tablesCreatedBy} from '../../src/migrations/plan.js'
import {e2eScope, localArgs, parseJson, runCli} from '../helpers/cli.js'
import {connect, V030_SCHEMA_FILE} from '../helpers/fixture.js'
import {migrateAndSeed} from '../helpers/maintain.js'

const {fresh} = e2eScope()
const report = (db: string, ...extra: string[]) => runCli(['db', 'e2ee', 'maintain', 'report', ...localArgs(db), ...extra])

describe('maintain report', () => {
  it('reports index usage of 013-016 only (D8 fixed), stale signed prekeys, low prekey stock, bloat and vacuum times', async () => {
    const db = await fresh()
    // 30 devices, 4 unconsumed prekeys each; dev-1..dev-10 get 10 more; every third device rotated 10 days ago.
    await migrateAndSeed(db.name, {auditRows: 20_000, devices: 30, prekeysPerDevice: 12})
    const sql = connect(db.name)
    await sql.unsafe(`
      insert into nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted)
        select 'dev-' || i, 100 + k, '\\x01', '\\x01' from generate_series(1, 10) i, generate_series(1, 10) k;
      insert into nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted)
        select 'dev-nosp', id, '\\x01', '\\x01' from nchat_users limit 1;
      create schema decoy; create table decoy.nchat_e2ee_decoy (id int primary key);
      create index idx_messages_decoy on nchat_messages (created_at);`)
    await sql`select pg_stat_reset()`
    await sql.end()

    // Traffic on one index, counted once the session has ended (the statistics are flushed then).
    const traffic = connect(db.name)
    await traffic.unsafe('set enable_seqscan = off; set enable_bitmapscan = off')
    for (let i = 0; i < 5; i++)
      await traffic.unsafe(
        `select prekey_id from nchat_one_time_prekeys where device_id = 'dev-1' and is_consumed = false order by created_at, prekey_id limit 1`,
      )
    await traffic.end()
    // Bloat to find: most audit rows gone, not vacuumed, analyzed.
    const maint = connect(db.name)
    await maint`delete from nchat_e2ee_audit_log where metadata->>'class' = 'old'`
    await maint`analyze nchat_e2ee_audit_log`
    await maint`vacuum (analyze) nchat_signed_prekeys`
    // Every index of the tables 013-016 create, and the three the guide puts on the columns they add.
    const expectedIndexes = await maint<{table: string; index: string}[]>`
      select tablename as table, indexname as index from pg_indexes where schemaname = 'public' and (
        tablename = any(${tablesCreatedBy(loadMigrations())})
        or indexname in ('idx_messages_encrypted', 'idx_messages_sender_device', 'idx_channels_enforce_encryption'))`
    // The v0.3.0 indexes of the two altered tables (and the decoy) cover none of the added columns.
    const v030 = [...readFileSync(V030_SCHEMA_FILE, 'utf8').matchAll(/CREATE (?:UNIQUE )?INDEX (\w+) ON (nchat_messages|nchat_channels)\b/g)].map(
      (m) => `${m[2]}.${m[1]}`,
    )
    expect(v030.length).toBeGreaterThan(4)
    const notExpected = [...v030, 'nchat_messages.nchat_messages_pkey', 'nchat_channels.nchat_channels_pkey', 'nchat_messages.idx_messages_decoy']
    // The guide's query as written does not run: pg_stat_user_indexes names them relname and indexrelname.
    await expect(
      maint.unsafe(`SELECT schemaname, tablename, indexname, idx_scan, idx_tup_read, idx_tup_fetch FROM pg_stat_user_indexes
      WHERE tablename LIKE '%e2ee%' OR tablename IN ('nchat_messages', 'nchat_channels') ORDER BY idx_scan DESC`),
    ).rejects.toThrow(/column "tablename" does not exist/)
    const [{reset}] = await maint<{reset: Date}[]>`select stats_reset as reset from pg_stat_database where datname = current_database()`
    await maint.end()

    let doc: ReturnType<typeof parseJson>
    for (let attempt = 0; attempt < 20; attempt++) {
      const r = await report(db.name, '--json', '--list', '50')
      expect(r.code, r.stderr).toBe(0)
      doc = parseJson(r.stdout)
      if (doc.indexes.find((i: {index: string}) => i.index === 'idx_one_time_prekeys_next')?.scans >= 5) break
      await sleep(500)
    }
    expect(doc.ok).toBe(true)
    expect(Object.keys(doc).sort()).toEqual([
      'bloat',
      'database',
      'generatedAt',
      'indexes',
      'maintenance',
      'ok',
      'prekeyStock',
      'schema',
      'signedPrekeys',
      'statistics',
      'tables',
    ])
    expect(doc.statistics.resetAt).toBe(reset.toISOString())
    expect(doc.statistics.since).toBe(reset.toISOString())
    expect(doc.statistics.observedDays).toBeLessThan(1)

    const listed: string[] = doc.indexes.map((i: {table: string; index: string}) => `${i.table}.${i.index}`).sort()
    expect(listed).toEqual(expect.arrayContaining(expectedIndexes.map((i) => `${i.table}.${i.index}`)))
    for (const n of notExpected) expect(listed).not.toContain(n)
    // Anything else listed is on an altered table (an index a migration put on a column it added).
    const extra = listed.filter((n) => !expectedIndexes.some((i) => `${i.table}.${i.index}` === n))
    for (const n of extra) expect(n).toMatch(/^nchat_(messages|channels)\./)
    expect(listed.some((n: string) => n.includes('decoy'))).toBe(false)
    expect(doc.tables.altered).toMatchObject({
      nchat_channels: ['enforce_encryption'],
      nchat_messages: expect.arrayContaining(['is_encrypted', 'sender_device_id']),
    })
    const next = doc.indexes.find((i: {index: string}) => i.index === 'idx_one_time_prekeys_next')
    expect(next.scans).toBeGreaterThanOrEqual(5)
    expect(next.unused).toBe(false)
    expect(next.bytes).toBeGreaterThan(0)
    const pk = doc.indexes.find((i: {index: string}) => i.index === 'nchat_calls_pkey')
    expect(pk).toMatchObject({enforcesConstraint: true, scans: 0, unused: true})

    expect(doc.signedPrekeys).toMatchObject({rotationDays: 7, staleDevices: 11})
    expect(doc.signedPrekeys.devices.map((d: {deviceId: string}) => d.deviceId).sort()).toEqual(
      ['dev-nosp', ...Array.from({length: 10}, (_, i) => `dev-${3 * (i + 1)}`)].sort(),
    )
    expect(doc.signedPrekeys.devices.find((d: {deviceId: string}) => d.deviceId === 'dev-nosp').rotatedAt).toBeNull()
    expect(doc.prekeyStock).toMatchObject({lowDevices: 21, threshold: 10})
    expect(doc.prekeyStock.devices[0]).toMatchObject({deviceId: 'dev-nosp', unconsumed: 0})
    expect(doc.prekeyStock.devices.filter((d: {unconsumed: number}) => d.unconsumed === 4)).toHaveLength(20)

    expect(doc.bloat.method).toBe('estimate')
    const audit = doc.bloat.tables.find((b: {name: string}) => b.name === 'nchat_e2ee_audit_log')
    expect(audit.estimated).toBe(true)
    expect(audit.percent).toBeGreaterThan(30)
    const calls = doc.bloat.tables.find((b: {name: string}) => b.name === 'nchat_calls')
    expect(calls.wastedBytes).toBe(0)
    const m = doc.maintenance.find((t: {table: string}) => t.table === 'nchat_signed_prekeys')
    expect(m.lastVacuum).not.toBeNull()
    expect(m.lastAnalyze).not.toBeNull()
    expect(doc.maintenance.find((t: {table: string}) => t.table === 'nchat_e2ee_audit_log').lastVacuum).toBeNull()

    // Other thresholds; and pgstattuple, measured, once installed.
    const s2 = connect(db.name)
    await s2`create extension if not exists pgstattuple`
    await s2.end()
    const r2 = await report(db.name, '--json', '--rotation-days', '30', '--stock-threshold', '4')
    expect(r2.code, r2.stderr).toBe(0)
    const d2 = parseJson(r2.stdout)
    expect(d2.signedPrekeys.staleDevices).toBe(1)
    expect(d2.prekeyStock.lowDevices).toBe(1)
    expect(d2.bloat.method).toBe('pgstattuple')
    // Measured: the deleted rows are dead (or, while another session's snapshot is older, recently dead) space.
    expect(d2.bloat.tables.find((b: {name: string}) => b.name === 'nchat_e2ee_audit_log').percent).toBeGreaterThan(30)
    expect(d2.bloat.tables.find((b: {name: string}) => b.name === 'nchat_calls').wastedBytes).toBe(0)
    expect(d2.bloat.indexes.length).toBeGreaterThan(20)

    const human = await report(db.name)
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/Index usage \(counters since /)
    expect(human.stdout).toMatch(/Signed prekeys older than 7 days \(or none active\): 11 device\(s\)/)
    expect(human.stdout).toMatch(/Fewer than 10 unconsumed one-time prekeys: 21 device\(s\)/)
    // Every figure of the JSON document is in the text too: the reset time, unused indexes, bloat, vacuum and analyze.
    expect(human.stdout).toContain(`reset ${reset.toISOString()}`)
    expect(human.stdout).toMatch(/nchat_calls\s+nchat_calls_pkey\s+0 scans .*unused \(enforces a constraint: keep\)/)
    expect(human.stdout).toMatch(/Bloat \(pgstattuple\): /)
    expect(human.stdout).toMatch(/\n {2}nchat_e2ee_audit_log\s+\S+ \S+\s+\S+ \S+ \([\d.]+ %\) reclaimable\n/)
    expect(human.stdout).toMatch(/Vacuum and analyze\n/)
    expect(human.stdout).toMatch(/nchat_signed_prekeys\s+vacuum \d{4}-\d\d-\d\dT[\d:.]+Z\s+analyze \d{4}-/)
  })

  it('reports on a database at 014 (015 and 016 not applied) what is there, and cleanup runs on it', async () => {
    const db = await fresh()
    const expected = await migrateAndSeed(db.name, {auditRows: 1000, devices: 6, prekeysPerDevice: 12, to: 14})
    const r = await report(db.name, '--json')
    expect(r.code, r.stderr).toBe(0)
    const doc = parseJson(r.stdout)
    const tables = new Set(doc.indexes.map((i: {table: string}) => i.table))
    expect(tables.has('nchat_one_time_prekeys')).toBe(true)
    expect(tables.has('nchat_calls')).toBe(false)
    expect(doc.signedPrekeys.staleDevices).toBe(expected.staleSignedPrekeyDevices)
    const c = await runCli(['db', 'e2ee', 'maintain', 'cleanup', ...localArgs(db.name), '--yes', '--json'])
    expect(c.code, c.stderr).toBe(0)
    expect(parseJson(c.stdout).deleted).toBe(expected.auditDelete + expected.prekeyDelete)
  })

  it('names the missing table on a database without 014', async () => {
    const db = await fresh()
    const r = await report(db.name)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/The table public\.nchat_identity_keys does not exist, so there is nothing to report on/)
    const json = await report(db.name, '--json')
    expect(json.code).toBe(1)
    expect(parseJson(json.stdout)).toMatchObject({error: {message: expect.stringMatching(/nchat_identity_keys does not exist/)}, ok: false})
    const bad = await report(db.name, '--json', '--stock-threshold', '0')
    expect(bad.code).toBe(2)
    expect(parseJson(bad.stdout).error.message).toContain('Parsing --stock-threshold')
  })
})
