import {spawn} from 'node:child_process'
import {chmodSync, createWriteStream, mkdirSync, readdirSync, statSync, utimesSync} from 'node:fs'
import path from 'node:path'

import {describe, expect, it} from 'vitest'

import {readDumpLedgerVersion} from '../../src/steps/nself-dumps.js'
import {PgTools} from '../../src/connection/tools.js'
import {resolveTarget} from '../../src/connection/target.js'
import {dataDigest, V030_TABLES} from '../helpers/fixture.js'
import {e2eScope, fakeDockerEnv, ledgerVersion, makeProject, parseJson, runCli} from '../helpers/cli.js'

const scope = e2eScope()
const {cleanups} = scope

/** An nself project (PROJECT_NAME nchat) for `db`, its tools in the stand-in docker container nchat_postgres. */
function nselfProject(db: string) {
  const project = makeProject({POSTGRES_DB: db, POSTGRES_HOST: 'postgres', PROJECT_NAME: 'nchat'})
  cleanups.push(project.cleanup)
  const env = fakeDockerEnv('nchat_postgres', path.join(project.dir, 'docker.log'))
  return {args: ['--project-dir', project.dir, '--host', '127.0.0.1'], backups: path.join(project.dir, 'backups'), dir: project.dir, env}
}

const pad = (n: number) => String(n).padStart(2, '0')
const stamp = (d: Date) => `${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}_${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}`

/** What `nself db backup` does: `docker exec <project>_postgres pg_dump -Fc` into backups/<Project>_<ts>.dump, 0600. */
async function nselfDbBackup(p: ReturnType<typeof nselfProject>, database: string, when: Date): Promise<string> {
  mkdirSync(p.backups, {mode: 0o700, recursive: true})
  const file = path.join(p.backups, `nchat_${stamp(when)}.dump`)
  await new Promise<void>((resolve, reject) => {
    const out = createWriteStream(file, {mode: 0o600})
    const child = spawn('docker', ['exec', 'nchat_postgres', 'pg_dump', '-U', 'postgres', '-Fc', database], {
      env: {...process.env, ...p.env},
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    child.stdout.pipe(out)
    child.on('error', reject)
    child.on('close', (code) => (code === 0 ? out.close(() => resolve()) : reject(new Error(`pg_dump exited ${code}`))))
  })
  chmodSync(file, 0o600)
  utimesSync(file, when, when)
  return file
}

/**
 * The file `nself backup restore latest` takes (internal/backup list.go and restore.go): every non-folder entry
 * of backups/, newest modification time first; the first of type full or manual (a name without _metadata_,
 * minio_ or _wal_); its id is the name without extension, and the first name in the folder containing the id wins.
 */
function nselfRestoreLatest(dir: string): string | undefined {
  const names = readdirSync(dir).sort()
  const entries = names
    .filter((n) => !statSync(path.join(dir, n)).isDirectory())
    .map((n) => ({mtime: statSync(path.join(dir, n)).mtimeMs, name: n}))
    .sort((a, b) => b.mtime - a.mtime)
  for (const e of entries) {
    const lower = e.name.toLowerCase()
    const type = lower.includes('_full_')
      ? 'full'
      : lower.includes('_metadata_')
        ? 'metadata'
        : lower.includes('minio_')
          ? 'minio'
          : lower.includes('_wal_') || lower.endsWith('.wal')
            ? 'wal'
            : 'manual'
    if (type !== 'full' && type !== 'manual') continue
    const base = e.name.replace(/\.age$/, '')
    const id = base.slice(0, base.length - path.extname(base).length)
    const match = names.find((n) => n.includes(id) || n === id)
    if (match) return path.join(dir, match)
  }
  return undefined
}

describe("backups shared with nself's backups/ folder (stand-in docker)", () => {
  it('after our migrate, `nself backup restore latest` picks our pre-migration dump, and backups/ holds nothing but dumps', async () => {
    const db = await scope.fresh({messages: 500})
    const p = nselfProject(db.name)
    const older = await nselfDbBackup(p, db.name, new Date(Date.now() - 3600_000))
    const r = await runCli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-dryrun', ...p.args], {env: p.env})
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(path.dirname(s.backup.file)).toBe(p.backups)
    expect(await ledgerVersion(db.name)).toBe(16)

    const files = readdirSync(p.backups)
      .filter((n) => !statSync(path.join(p.backups, n)).isDirectory())
      .sort()
    expect(files).toEqual([path.basename(older), path.basename(s.backup.file)].sort())
    expect(nselfRestoreLatest(p.backups)).toBe(s.backup.file)
    const tools = await PgTools.create(resolveTarget({host: '127.0.0.1', local: true, projectDir: p.dir}, {}))
    expect(await readDumpLedgerVersion(tools, s.backup.file)).toBe(12)
  }, 600_000)

  it("our rollback finds nself's own dump (no manifest), reads it, skips ones that do not fit, and restores it", async () => {
    const db = await scope.fresh({messages: 500})
    const other = await scope.fresh({messages: 10})
    const p = nselfProject(db.name)
    const data = await dataDigest(db.name, [...V030_TABLES])
    const fits = await nselfDbBackup(p, db.name, new Date(Date.now() - 120_000))
    const otherDb = await nselfDbBackup(p, other.name, new Date(Date.now() - 60_000))

    // Upgrade without a backup of our own, so only nself's dumps can undo it.
    const m = await runCli(['db', 'e2ee', 'migrate', '--yes', '--skip-backup', ...p.args], {env: p.env})
    expect(m.code, m.stderr).toBe(0)
    const after = await nselfDbBackup(p, db.name, new Date(Date.now() + 5000))

    // Named explicitly, a dump that cannot undo the upgrade is refused, saying why.
    const wrongDb = await runCli(['db', 'e2ee', 'rollback', '--yes', '--backup', otherDb, ...p.args], {env: p.env})
    expect(wrongDb.code).toBe(1)
    // The dump's own header names its database: refused before its data is read.
    expect(wrongDb.stderr).toContain(`The backup ${otherDb} is a dump of the database "${other.name}", not of "${db.name}".`)
    const tooNew = await runCli(['db', 'e2ee', 'rollback', '--yes', '--backup', after, ...p.args], {env: p.env})
    expect(tooNew.code).toBe(1)
    expect(tooNew.stderr).toContain(`The backup ${after} cannot undo the upgrade: it was taken at migration 16, after the upgrade began.`)
    expect(await ledgerVersion(db.name)).toBe(16)

    const r = await runCli(['db', 'e2ee', 'rollback', '--yes', '--json', ...p.args], {env: p.env})
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s.backup.file).toBe(fits)
    expect(s).toMatchObject({after: 12, before: 16, ok: true, strategy: 'restore'})
    expect(await ledgerVersion(db.name)).toBe(12)
    expect(await dataDigest(db.name, [...V030_TABLES])).toEqual(data)
  }, 600_000)
})
