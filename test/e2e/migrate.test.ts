import {execFile} from 'node:child_process'
import {readdirSync, statSync} from 'node:fs'
import path from 'node:path'
import {promisify} from 'node:util'
import {describe, expect, it} from 'vitest'

import {manifestPathFor} from '../../src/archive/manifest.js'

import {ADMIN, connect, dataDigest, dropDatabase, V030_TABLES} from '../helpers/fixture.js'
import {appSchemaDump} from '../helpers/engine.js'
import {dockerCalls, e2eScope, fakeDockerEnv, ledgerVersion, leftoverDatabases, localArgs, makeProject, parseJson, runCli} from '../helpers/cli.js'

const execFileP = promisify(execFile)
const {backupDir, cleanups, fresh} = e2eScope()

describe('nself db e2ee migrate, end to end', () => {
  it('runs all eight steps locally: verified 0600 backup of the pre-migration state, no clone left, at 016, vacuumed; a second run is a no-op', async () => {
    const db = await fresh({messages: 5000})
    const dir = backupDir()
    const schemaBefore = await appSchemaDump(db.name)
    const dataBefore = await dataDigest(db.name, [...V030_TABLES])

    const r = await runCli(['db', 'e2ee', 'migrate', '--yes', '--json', ...localArgs(db.name), '--backup-dir', dir])
    expect(r.stderr).not.toMatch(/at .*\.js:\d+/) // no stack trace
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s.ok).toBe(true)
    expect(s.before).toBe(12)
    expect(s.after).toBe(16)
    expect(s.applied).toEqual(['013_e2ee_system', '014_e2ee_system', '015_voice_calls', '016_live_streaming'])
    expect(Object.keys(s.timings)).toEqual(['preflight', 'backup', 'dryrun', 'apply', 'verify', 'vacuum', 'hasura'])
    expect(s.dryrun.forecastMs).toBeGreaterThan(0)
    expect(s.verify.ok).toBe(true)
    expect(await ledgerVersion(db.name)).toBe(16)
    expect(await leftoverDatabases(db.name)).toEqual([])

    // The backup: 0600 in a 0700 folder, nself's name, a manifest, and it restores to the state before.
    expect(statSync(dir).mode & 0o777).toBe(0o700)
    const dumps = readdirSync(dir).filter((f) => f.endsWith('.dump'))
    expect(dumps).toHaveLength(1)
    expect(dumps[0]).toMatch(/^.+_\d{8}_\d{6}\.dump$/)
    const file = path.join(dir, dumps[0])
    expect(statSync(file).mode & 0o777).toBe(0o600)
    expect(statSync(manifestPathFor(file)).mode & 0o777).toBe(0o600)
    // Nothing but dumps in backups/ (nself's `backup list` counts every file there); our manifest is in a folder.
    expect(readdirSync(dir).sort()).toEqual(['.nself-e2ee', dumps[0]])
    expect(s.backup.file).toBe(file)
    const restored = `${db.name}_r`
    cleanups.push(() => dropDatabase(restored))
    await execFileP('createdb', ['-h', ADMIN.host, '-p', String(ADMIN.port), '-U', ADMIN.user, restored])
    await execFileP('pg_restore', ['-h', ADMIN.host, '-p', String(ADMIN.port), '-U', ADMIN.user, '-d', restored, '--exit-on-error', file])
    expect(await appSchemaDump(restored)).toBe(schemaBefore)
    expect(await dataDigest(restored, [...V030_TABLES])).toEqual(dataBefore)

    // Vacuumed: new and modified tables.
    const sql = connect(db.name)
    try {
      await sql`select pg_stat_clear_snapshot()`
      const rows = await sql<{relname: string; last_vacuum: Date | null}[]>`
        select relname, last_vacuum from pg_stat_user_tables where relname in ('nchat_messages', 'nchat_channels', 'nchat_identity_keys', 'nchat_calls', 'nchat_streams')`
      expect(rows).toHaveLength(5)
      for (const row of rows) expect(row.last_vacuum, row.relname).not.toBeNull()
    } finally {
      await sql.end()
    }

    const again = await runCli(['db', 'e2ee', 'migrate', '--yes', '--json', ...localArgs(db.name), '--backup-dir', dir])
    expect(again.code, again.stderr).toBe(0)
    expect(parseJson(again.stdout)).toMatchObject({after: 16, applied: [], nothingToDo: true})
    expect(readdirSync(dir).filter((f) => f.endsWith('.dump'))).toHaveLength(1)
  })

  it('runs pg_dump and pg_restore through docker exec -i (no -t, no password in argv) with --container', async () => {
    const db = await fresh()
    const dir = backupDir()
    const secret = `pw-${Math.random().toString(36).slice(2)}`
    const project = makeProject({POSTGRES_DB: db.name, POSTGRES_PASSWORD: secret, POSTGRES_USER: 'postgres', PROJECT_NAME: 'nchat'})
    cleanups.push(project.cleanup)
    const log = path.join(project.dir, 'docker.log')
    const r = await runCli(
      ['db', 'e2ee', 'migrate', '--yes', '--project-dir', project.dir, '--host', ADMIN.host, '--container', 'nchat_postgres', '--backup-dir', dir],
      {
        env: fakeDockerEnv('nchat_postgres', log, secret),
      },
    )
    expect(r.code, r.stderr + r.stdout).toBe(0)
    expect(r.stdout + r.stderr).not.toContain(secret)
    const calls = dockerCalls(log)
    const execs = calls.filter((c) => c[0] === 'exec')
    expect(execs.some((c) => c.includes('pg_dump'))).toBe(true)
    expect(execs.some((c) => c.includes('pg_restore'))).toBe(true)
    for (const c of execs) {
      expect(c[1]).toBe('-i')
      expect(c).not.toContain('-t')
      expect(c.join(' ')).not.toContain(secret)
      expect(c).toContain('nchat_postgres')
    }
    expect(await ledgerVersion(db.name)).toBe(16)
    expect(await leftoverDatabases(db.name)).toEqual([])
  })

  it('finds the container by the nself name ${PROJECT_NAME}_postgres and names the ones it tried when none runs', async () => {
    const db = await fresh()
    const project = makeProject({POSTGRES_DB: db.name, PROJECT_NAME: 'chatx'})
    cleanups.push(project.cleanup)
    const log = path.join(project.dir, 'docker.log')
    const r = await runCli(['db', 'e2ee', 'migrate', '--yes', '--project-dir', project.dir, '--host', ADMIN.host], {env: fakeDockerEnv('other_postgres', log)})
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/No running nself postgres container: tried chatx_postgres \(not found\), nself-postgres \(not found\)/)
    expect(await ledgerVersion(db.name)).toBe(12)
  })

  it('without a terminal and without --yes, refuses before doing anything', async () => {
    const db = await fresh()
    const dir = backupDir()
    const r = await runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), '--backup-dir', dir])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/needs confirmation, and there is no terminal to ask on/)
    expect(r.stderr).toMatch(/--yes/)
    expect(await ledgerVersion(db.name)).toBe(12)
  })

  it('bad input gets one clear sentence, a non-zero exit and changes nothing', async () => {
    const db = await fresh()
    const dir = backupDir()
    const cases: Array<{args: string[]; code: number; message: RegExp}> = [
      {args: ['db', 'e2ee', 'migrate', '--yes', '--no-such-flag', ...localArgs(db.name)], code: 2, message: /Nonexistent flag: --no-such-flag/},
      {
        args: ['db', 'e2ee', 'migrate', '--yes', ...localArgs('e2ee_no_such_db'), '--backup-dir', dir],
        code: 1,
        message: /database "e2ee_no_such_db" does not exist/,
      },
      {args: ['db', 'e2ee', 'migrate', '--yes', ...localArgs('postgres'), '--backup-dir', dir], code: 1, message: /has no nChat tables/},
      {args: ['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--to', '17'], code: 1, message: /--to 17 is not one of the packaged migrations/},
      {
        args: ['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--schema', 'x"; drop table nchat_users; --'],
        code: 1,
        message: /is not a valid PostgreSQL identifier/,
      },
      {args: ['db', 'e2ee', 'migrate', ...localArgs(db.name), '--skip-backup'], code: 2, message: /--skip-backup needs --yes/},
      {
        args: ['db', 'e2ee', 'migrate', '--yes', '--local', '--host', '127.0.0.1', '--port', '1', '-d', db.name],
        code: 1,
        message: /cannot connect to PostgreSQL at 127\.0\.0\.1:1/,
      },
    ]
    for (const c of cases) {
      const r = await runCli(c.args)
      expect(r.code, `${c.args.join(' ')}\n${r.stderr}`).toBe(c.code)
      expect(r.stderr, c.args.join(' ')).toMatch(c.message)
      expect(r.stderr).not.toMatch(/\n\s+at .+:\d+:\d+/)
    }
    expect(await ledgerVersion(db.name)).toBe(12)
    expect(readdirSync(path.dirname(dir))).not.toContain('backups')
  })

  it('stops at the dry run when the migration would fail there, and production is untouched', async () => {
    const db = await fresh()
    const dir = backupDir()
    const sql = connect(db.name)
    // A hand-made view whose name clashes with a table of 015 (a table of another shape stops preflight instead:
    // test/e2e/nchat-reference.test.ts).
    await sql`create view nchat_call_participants as select 1 as id`
    await sql.end()
    const schemaBefore = await appSchemaDump(db.name)
    const r = await runCli(['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--backup-dir', dir])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/dry run on a copy failed, so production was not touched.*015_voice_calls/)
    expect(await appSchemaDump(db.name)).toBe(schemaBefore)
    expect(await leftoverDatabases(db.name)).toEqual([])
  })
})

describe('nself db e2ee verify', () => {
  it('passes after migrate and names a sabotaged index and an invalidated constraint', async () => {
    const db = await fresh()
    const dir = backupDir()
    const m = await runCli(['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--backup-dir', dir, '--skip-dryrun'])
    expect(m.code, m.stderr).toBe(0)
    const ok = await runCli(['db', 'e2ee', 'verify', '--json', ...localArgs(db.name)])
    expect(ok.code, ok.stderr).toBe(0)
    expect(parseJson(ok.stdout).ok).toBe(true)

    const sql = connect(db.name)
    await sql`drop index idx_signal_sessions_peer`
    await sql`alter table nchat_messages drop constraint fk_messages_sender_device`
    await sql`alter table nchat_messages add constraint fk_messages_sender_device foreign key (sender_device_id) references nchat_identity_keys(device_id) on delete set null not valid`
    await sql.end()
    const bad = await runCli(['db', 'e2ee', 'verify', ...localArgs(db.name)])
    expect(bad.code).toBe(1)
    expect(bad.stdout + bad.stderr).toMatch(/idx_signal_sessions_peer/)
    expect(bad.stdout + bad.stderr).toMatch(/fk_messages_sender_device[^\n]*(not validated|NOT VALID)/i)
  })
})
