import path from 'node:path'
import {describe, expect, it} from 'vitest'

import {connect, dataDigest, schemaDump, V030_TABLES} from '../helpers/fixture.js'
import {dockerCalls, e2eScope, fakeDockerEnv, ledgerVersion, leftoverDatabases, localArgs, makeProject, parseJson, runCli} from '../helpers/cli.js'

const scope = e2eScope()
const {backupDir, cleanups} = scope
const fresh = () => scope.fresh({messages: 3000})

async function snapshot(db: string) {
  return {data: await dataDigest(db, [...V030_TABLES, 'schema_migrations']), schema: await schemaDump(db)}
}

describe('nself db e2ee dryrun', () => {
  it('changes nothing in production (schema, data, ledger), leaves no clone, and reports statements, locks and the forecast', async () => {
    const db = await fresh()
    const before = await snapshot(db.name)
    const r = await runCli(['db', 'e2ee', 'dryrun', '--yes', '--json', ...localArgs(db.name), '--backup-dir', backupDir()])
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s.ok).toBe(true)
    expect(s.wouldApply).toEqual(['013_e2ee_system', '014_e2ee_system', '015_voice_calls', '016_live_streaming'])
    expect(s.forecastMs).toBeGreaterThan(0)
    expect(s.verification.ok).toBe(true)
    expect(s.backup).toBeNull()
    expect(s.rehearsalDump.removed).toBe(true)
    expect(s.leftOut.map((l: {table: string}) => l.table)).toEqual(expect.arrayContaining([expect.stringMatching(/nchat_reactions/)]))
    const alter = s.statements.find((x: {statement: string}) => /^ALTER TABLE nchat_messages ADD COLUMN/i.test(x.statement))
    expect(alter).toMatchObject({inTransaction: true, migration: '014_e2ee_system'})
    expect(alter.locks).toEqual(expect.arrayContaining([{mode: expect.stringMatching(/AccessExclusiveLock/), table: 'nchat_messages'}]))
    const cic = s.statements.find((x: {statement: string}) => /CONCURRENTLY IF NOT EXISTS idx_messages_encrypted/.test(x.statement))
    expect(cic).toMatchObject({inTransaction: false, locks: [{mode: 'ShareUpdateExclusiveLock', table: 'nchat_messages'}]})
    expect(await snapshot(db.name)).toEqual(before)
    expect(await leftoverDatabases(db.name)).toEqual([])
  })

  it('exits non-zero naming the statement that would fail (a clashing hand-made object); production unchanged', async () => {
    const db = await fresh()
    const sql = connect(db.name)
    await sql`create view nchat_streams as select 1 as x`
    await sql.end()
    const before = await snapshot(db.name)
    const r = await runCli(['db', 'e2ee', 'dryrun', '--yes', ...localArgs(db.name), '--backup-dir', backupDir()])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/The migration would fail: .*016_live_streaming failed at line \d+ \([^)]*nchat_streams/)
    expect(await snapshot(db.name)).toEqual(before)
    expect(await leftoverDatabases(db.name)).toEqual([])
  })

  it('uses --from-backup after checking it against its manifest, and refuses a tampered one', async () => {
    const db = await fresh()
    const dir = backupDir()
    // A plain dryrun leaves no backup (its rehearsal dump is removed); --full takes and keeps a verified one.
    const first = parseJson((await runCli(['db', 'e2ee', 'dryrun', '--json', '--full', ...localArgs(db.name), '--backup-dir', dir])).stdout)
    expect(first.backup.taken).toBe(true)
    const file = first.backup.file
    const again = await runCli(['db', 'e2ee', 'dryrun', '--json', ...localArgs(db.name), '--from-backup', file])
    expect(again.code, again.stderr).toBe(0)
    expect(parseJson(again.stdout).backup).toEqual({file, taken: false})
    const {appendFileSync} = await import('node:fs')
    appendFileSync(file, Buffer.from('tampered'))
    const bad = await runCli(['db', 'e2ee', 'dryrun', ...localArgs(db.name), '--from-backup', file])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toContain(path.basename(file))
    expect(bad.stderr).toMatch(/sha256|bytes but its manifest says/)
    expect(await ledgerVersion(db.name)).toBe(12)
  })

  it('works through docker exec (stand-in docker)', async () => {
    const db = await fresh()
    const project = makeProject({POSTGRES_DB: db.name, PROJECT_NAME: 'nchat'})
    cleanups.push(project.cleanup)
    const log = path.join(project.dir, 'docker.log')
    const r = await runCli(['db', 'e2ee', 'dryrun', '--json', '--project-dir', project.dir, '--host', '127.0.0.1'], {env: fakeDockerEnv('nchat_postgres', log)})
    expect(r.code, r.stderr).toBe(0)
    expect(parseJson(r.stdout).ok).toBe(true)
    const calls = dockerCalls(log)
    expect(calls.some((c) => c[0] === 'exec' && c.includes('pg_restore'))).toBe(true)
    expect(calls.some((c) => c[0] === 'exec' && c.includes('pg_dump') && c.includes('--exclude-table-data="public"."nchat_messages"'))).toBe(true)
    expect(calls.every((c) => !c.includes('-t'))).toBe(true)
    expect(await ledgerVersion(db.name)).toBe(12)
    expect(await leftoverDatabases(db.name)).toEqual([])
  })
})
