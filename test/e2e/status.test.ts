import postgres from 'postgres'
import {describe, expect, it} from 'vitest'

import {assertServerSupported} from '../../src/migrations/plan.js'
import {ADMIN, connect} from '../helpers/fixture.js'
import {e2eScope, ledgerVersion, localArgs, makeProject, parseJson, runCli} from '../helpers/cli.js'

const {cleanups, fresh} = e2eScope()

describe('nself db e2ee status', () => {
  it('shows server, schema, every migration with its state and checksum, and where each setting came from', async () => {
    const db = await fresh({schema: 'nchat'})
    const project = makeProject({POSTGRES_DB: db.name, POSTGRES_PASSWORD: 'not-shown', PROJECT_NAME: 'nchat'})
    cleanups.push(project.cleanup)
    const r = await runCli(['db', 'e2ee', 'status', '--json', '--project-dir', project.dir, '--host', ADMIN.host, '-U', 'postgres'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).not.toContain('not-shown')
    const s = parseJson(r.stdout)
    expect(s.server).toMatch(/^\d+\.\d+/)
    expect(s.schema).toBe('nchat')
    expect(s.migrations.map((m: {name: string; state: string}) => `${m.name}:${m.state}`)).toEqual([
      '013_e2ee_system:pending',
      '014_e2ee_system:pending',
      '015_voice_calls:pending',
      '016_live_streaming:pending',
    ])
    for (const m of s.migrations) expect(m.checksum).toMatch(/^[0-9a-f]{64}$/)
    expect(s.ledger.current).toBe(12)
    expect(s.connection.sources).toMatchObject({database: '.env', host: 'flag --host', password: '.env', user: 'flag --user'})

    const human = await runCli(['db', 'e2ee', 'status', '--project-dir', project.dir, '--host', ADMIN.host])
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/pending\s+013_e2ee_system\s+sha256 [0-9a-f]{12}/)
    expect(human.stdout).toMatch(/Pending: 13, 14, 15, 16/)
  })
})

describe('refusals before anything runs', () => {
  it('a server older than PostgreSQL 14 is refused with the version', () => {
    expect(() => assertServerSupported({num: 130_011, text: '13.11'})).toThrow(/version 13\.11; nChat v0\.4\.0 needs PostgreSQL 14 or newer/)
    expect(() => assertServerSupported({num: 140_000, text: '14.0'})).not.toThrow()
  })

  it('a ledger ahead of the packaged migrations is refused, naming the version', async () => {
    const db = await fresh()
    const sql = connect(db.name)
    await sql`insert into schema_migrations (version) values (17)`
    await sql.end()
    const r = await runCli(['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--skip-dryrun', '--skip-backup'])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/schema_migrations records version 17, newer than the newest migration this plugin knows \(16\)/)
    expect(await ledgerVersion(db.name)).toBe(17)
  })

  it('a second run waits for the first (--lock-wait), names it, then gives up clearly', async () => {
    const db = await fresh()
    const holder = postgres({...ADMIN, connection: {application_name: 'nself-e2ee-other'}, database: db.name, max: 1})
    await holder`select pg_advisory_lock(${0x6e_73_6c_66}, 40)`
    try {
      const r = await runCli(['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--skip-dryrun', '--skip-backup', '--lock-wait', '1'])
      expect(r.code).toBe(1)
      expect(r.stdout + r.stderr).toMatch(/waiting for another nself db e2ee run \(pid \d+ \(nself-e2ee-other\)\)/)
      expect(r.stderr).toMatch(/Another nself db e2ee run \(pid \d+ \(nself-e2ee-other\)\) is working on this database; waited 1 s/)
      expect(await ledgerVersion(db.name)).toBe(12)
    } finally {
      await holder.end()
    }
  })
})
