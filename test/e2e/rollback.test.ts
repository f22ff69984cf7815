import {createHash} from 'node:crypto'
import {readdirSync, readFileSync, truncateSync, writeFileSync, copyFileSync, statSync} from 'node:fs'
import path from 'node:path'
import {describe, expect, it} from 'vitest'

import {manifestPathFor} from '../../src/archive/manifest.js'

import {dataDigest, V030_TABLES} from '../helpers/fixture.js'
import {appSchemaDump} from '../helpers/engine.js'
import {e2eScope, fakeDockerEnv, ledgerVersion, leftoverDatabases, localArgs, makeProject, parseJson, runCli, tmpDir} from '../helpers/cli.js'

const scope = e2eScope()
const {backupDir, cleanups} = scope
const fresh = () => scope.fresh({messages: 3000})

/** An nself project for `db` whose tools run through the stand-in docker (container nchat_postgres). */
function dockerProject(db: string) {
  const project = makeProject({POSTGRES_DB: db, PROJECT_NAME: 'nchat'})
  cleanups.push(project.cleanup)
  return {args: ['--project-dir', project.dir, '--host', '127.0.0.1'], env: fakeDockerEnv('nchat_postgres', path.join(project.dir, 'docker.log'))}
}

async function migrate(db: string, dir: string, extra: string[] = [], env?: Record<string, string>) {
  const r = await runCli(
    ['db', 'e2ee', 'migrate', '--yes', ...extra, ...(extra.includes('--project-dir') ? [] : localArgs(db)), '--backup-dir', dir, '--skip-dryrun'],
    {env},
  )
  expect(r.code, r.stderr).toBe(0)
  expect(await ledgerVersion(db)).toBe(16)
}

describe('nself db e2ee rollback --strategy restore', () => {
  it('gives back the pre-migration schema and data, keeps the replaced database, and ends at 12', async () => {
    const db = await fresh()
    const dir = backupDir()
    const schema = await appSchemaDump(db.name)
    const data = await dataDigest(db.name, [...V030_TABLES])
    await migrate(db.name, dir)
    const r = await runCli(['db', 'e2ee', 'rollback', '--yes', '--json', ...localArgs(db.name), '--backup-dir', dir])
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s).toMatchObject({after: 12, before: 16, ok: true, strategy: 'restore'})
    expect(s.kept.database).toMatch(new RegExp(`^${db.name}_pre_rollback_\\d{8}_\\d{6}$`))
    expect(s.kept.dropWith).toBe(`DROP DATABASE "${s.kept.database}";`)
    expect(await appSchemaDump(db.name)).toBe(schema)
    expect(await dataDigest(db.name, [...V030_TABLES])).toEqual(data)
    expect(await ledgerVersion(s.kept.database)).toBe(16)
    expect(await leftoverDatabases(db.name)).toEqual([])
    const st = await runCli(['db', 'e2ee', 'status', '--json', ...localArgs(db.name)])
    expect(parseJson(st.stdout).ledger.current).toBe(12)
  })

  it('refuses a corrupt, a truncated and a tampered backup with the live database untouched', async () => {
    const db = await fresh()
    const dir = backupDir()
    await migrate(db.name, dir)
    const dump = readdirSync(dir).find((f) => f.endsWith('.dump'))!
    const src = path.join(dir, dump)
    const bad = tmpDir()
    cleanups.push(bad.cleanup)
    const variant = (name: string, mutate: (file: string, manifest: Record<string, unknown>) => void) => {
      const file = path.join(bad.dir, `${name}_${dump}`)
      copyFileSync(src, file)
      const manifest = JSON.parse(readFileSync(manifestPathFor(src), 'utf8'))
      manifest.file = path.basename(file)
      mutate(file, manifest)
      writeFileSync(`${file}.manifest.json`, JSON.stringify(manifest))
      return file
    }
    const corrupt = variant('corrupt', (file) => {
      const b = readFileSync(file)
      b[Math.floor(b.length / 2)] ^= 0xff
      writeFileSync(file, b)
    })
    const truncated = variant('truncated', (file, m) => {
      truncateSync(file, Math.floor(statSync(file).size / 2))
      m.sha256 = createHash('sha256').update(readFileSync(file)).digest('hex')
      m.size = statSync(file).size
    })
    const tampered = variant('tampered', (_file, m) => {
      m.sha256 = '0'.repeat(64)
    })
    for (const [file, why] of [
      [corrupt, /sha256/],
      [truncated, /pg_restore|archive|truncated|corrupt/i],
      [tampered, /sha256/],
    ] as const) {
      const r = await runCli(['db', 'e2ee', 'rollback', '--yes', ...localArgs(db.name), '--backup', file])
      expect(r.code, file).toBe(1)
      expect(r.stderr).toContain(path.basename(file))
      expect(r.stderr).toMatch(why)
      expect(await ledgerVersion(db.name)).toBe(16)
      expect(await leftoverDatabases(db.name)).toEqual([])
    }
    const missing = await runCli(['db', 'e2ee', 'rollback', '--yes', ...localArgs(db.name), '--backup-dir', path.join(bad.dir, 'none')])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/No pre-migration backup of .* refusing to roll back without a way back/)
  })

  it('a failure during the restore (the copy does not match its manifest) leaves the live database as it was', async () => {
    const db = await fresh()
    const dir = backupDir()
    await migrate(db.name, dir)
    const dump = readdirSync(dir).find((f) => f.endsWith('.dump'))!
    const mf = manifestPathFor(path.join(dir, dump))
    const m = JSON.parse(readFileSync(mf, 'utf8'))
    m.row_counts.nchat_messages += 1
    writeFileSync(mf, JSON.stringify(m))
    const schema = await appSchemaDump(db.name)
    const r = await runCli(['db', 'e2ee', 'rollback', '--yes', ...localArgs(db.name), '--backup-dir', dir])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/rows in public\.nchat_messages, but the backup .* holds/)
    expect(await appSchemaDump(db.name)).toBe(schema)
    expect(await ledgerVersion(db.name)).toBe(16)
    expect(await leftoverDatabases(db.name, '%')).toEqual([])
  })

  it('works through docker exec (stand-in docker)', async () => {
    const db = await fresh()
    const dir = backupDir()
    const {args, env} = dockerProject(db.name)
    await migrate(db.name, dir, args, env)
    const r = await runCli(['db', 'e2ee', 'rollback', '--yes', '--json', ...args, '--backup-dir', dir], {env})
    expect(r.code, r.stderr).toBe(0)
    expect(await ledgerVersion(db.name)).toBe(12)
  })
})

describe('nself db e2ee rollback --strategy down', () => {
  it('takes a safety backup, then gives back exactly the v0.3.0 schema, ledger at 12, data unchanged', async () => {
    const db = await fresh()
    const dir = backupDir()
    const schema = await appSchemaDump(db.name)
    const data = await dataDigest(db.name, [...V030_TABLES])
    await migrate(db.name, dir)
    const r = await runCli(['db', 'e2ee', 'rollback', '--yes', '--json', '--strategy', 'down', ...localArgs(db.name), '--backup-dir', dir])
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s).toMatchObject({after: 12, before: 16, reverted: [16, 15, 14, 13], strategy: 'down'})
    expect(s.backup.file).toMatch(/\.dump$/)
    expect(statSync(s.backup.file).mode & 0o777).toBe(0o600)
    expect(await appSchemaDump(db.name)).toBe(schema)
    expect(await dataDigest(db.name, [...V030_TABLES])).toEqual(data)
    expect(await ledgerVersion(db.name)).toBe(12)
  })

  it('--to 14 reverts only 016 and 015, and asks for --yes without a terminal', async () => {
    const db = await fresh()
    const dir = backupDir()
    await migrate(db.name, dir)
    const ask = await runCli(['db', 'e2ee', 'rollback', '--strategy', 'down', '--to', '14', ...localArgs(db.name), '--backup-dir', dir])
    expect(ask.code).toBe(2)
    expect(await ledgerVersion(db.name)).toBe(16)
    const r = await runCli(['db', 'e2ee', 'rollback', '--yes', '--json', '--strategy', 'down', '--to', '14', ...localArgs(db.name), '--backup-dir', dir])
    expect(r.code, r.stderr).toBe(0)
    expect(parseJson(r.stdout).reverted).toEqual([16, 15])
    expect(await ledgerVersion(db.name)).toBe(14)
  })

  it('works through docker exec (stand-in docker)', async () => {
    const db = await fresh()
    const dir = backupDir()
    const {args, env} = dockerProject(db.name)
    await migrate(db.name, dir, args, env)
    const r = await runCli(['db', 'e2ee', 'rollback', '--yes', '--strategy', 'down', ...args, '--backup-dir', dir], {env})
    expect(r.code, r.stderr).toBe(0)
    expect(await ledgerVersion(db.name)).toBe(12)
  })
})
