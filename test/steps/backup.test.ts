import {execFileSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'

import {createRunScope} from '../../src/run/scope.js'
import {CancelledError, UserError} from '../../src/errors.js'
import {APP_NAME, type Sql} from '../../src/connection/connect.js'
import {PgTools} from '../../src/connection/tools.js'
import {SERVER_ARGS} from '../helpers/server.js'
import {listBackups, newestBackup} from '../../src/archive/listing.js'
import {type BackupInfo, MANIFEST_SUFFIX, manifestPathFor, type Manifest} from '../../src/archive/manifest.js'
import {takeBackup, verifyBackup} from '../../src/steps/backup.js'
import {
  adminSql,
  assertCleanDockerLog,
  createTestDb,
  dbSql,
  dropTestDb,
  type DockerEnv,
  ledgerVersion,
  makeTarget,
  SECRET,
  TABLES,
  tableDigest,
  tempDir,
  useDockerStandIn,
  waitFor,
} from './support.js'

const T = 120_000

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex')
}

function mode(p: string): number {
  return fs.statSync(p).mode & 0o777
}

/**
 * Restore the dump into a fresh database, outside the code under test: pg_restore's script through psql,
 * stopping at the first error. The one line a pg_restore 17+ writes that servers 16 and older reject
 * (SET transaction_timeout) is left out when the server is older than that.
 */
function restoreWithPgRestore(file: string, database: string): void {
  execFileSync('psql', [...SERVER_ARGS, '-d', 'postgres', '-qc', `CREATE DATABASE "${database}"`])
  const serverNum = Number(
    execFileSync('psql', [...SERVER_ARGS, '-d', 'postgres', '-XAtc', 'show server_version_num'])
      .toString()
      .trim(),
  )
  let script = execFileSync('pg_restore', ['-f', '-', file], {maxBuffer: 256 * 1024 * 1024}).toString()
  if (serverNum < 170_000) script = script.replace(/^SET transaction_timeout = 0;\n/m, '')
  execFileSync('psql', [...SERVER_ARGS, '-d', database, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', '-'], {input: script, maxBuffer: 256 * 1024 * 1024})
}

/** A copy of the backup (dump + manifest renamed to match) to damage. */
function copyBackup(file: string, suffix: string): string {
  const copy = file.replace(/\.dump$/, `_${suffix}.dump`)
  fs.copyFileSync(file, copy)
  const manifest = JSON.parse(fs.readFileSync(manifestPathFor(file), 'utf8')) as Manifest
  manifest.file = path.basename(copy)
  fs.writeFileSync(manifestPathFor(copy), JSON.stringify(manifest))
  return copy
}

let admin: Sql
beforeAll(() => {
  admin = adminSql()
})
afterAll(async () => {
  await admin.end({timeout: 2})
})

describe.each(['local', 'docker'] as const)('takeBackup (%s mode)', (mode_) => {
  let db = ''
  let sql: Sql | undefined
  let docker: DockerEnv | undefined
  let root = ''

  afterEach(async () => {
    docker?.restore()
    docker = undefined
    await sql?.end({timeout: 2})
    sql = undefined
    if (db) await dropTestDb(admin, db)
    db = ''
    if (root) fs.rmSync(root, {force: true, recursive: true})
  })

  it(
    'writes a 0600 dump in a 0700 folder, with a manifest whose checksum and counts are right, and the dump restores to identical data',
    async () => {
      db = await createTestDb(admin)
      root = tempDir()
      const backupDir = path.join(root, 'backups')
      if (mode_ === 'docker') docker = useDockerStandIn(root)
      const target = makeTarget({backupDir, database: db, mode: mode_})
      const tools = await PgTools.create(target)
      sql = dbSql(db)
      const progress: number[] = []
      const logs: string[] = []
      const info = await takeBackup({
        ledgerVersion: 12,
        log: (l) => logs.push(l),
        onProgress: (b) => progress.push(b),
        schema: 'public',
        sql,
        tables: [...TABLES, 'nchat_missing'],
        target,
        tools,
      })

      expect(path.dirname(info.file)).toBe(backupDir)
      expect(path.basename(info.file)).toMatch(/^nchat_\d{8}_\d{6}\.dump$/)
      expect(mode(backupDir)).toBe(0o700)
      expect(mode(info.file)).toBe(0o600)
      expect(mode(info.manifestFile)).toBe(0o600)
      // Only the dump in backups/ (nself's listing counts every file there); the manifest in the sidecar folder.
      expect(fs.readdirSync(backupDir).sort()).toEqual(['.nself-e2ee', path.basename(info.file)])
      expect(info.manifestFile).toBe(manifestPathFor(info.file))
      expect(fs.readdirSync(path.join(backupDir, '.nself-e2ee'))).toEqual([path.basename(info.manifestFile)])
      expect(mode(path.join(backupDir, '.nself-e2ee'))).toBe(0o700)
      expect(progress.length).toBeGreaterThan(0)
      expect(progress.at(-1)).toBe(info.bytes)
      expect(fs.statSync(info.file).size).toBe(info.bytes)

      const m = JSON.parse(fs.readFileSync(info.manifestFile, 'utf8')) as Manifest
      expect(m).toEqual(info.manifest)
      expect(m.format).toBe('nself-e2ee-backup/1')
      expect(m.file).toBe(path.basename(info.file))
      expect(m.sha256).toBe(sha256(info.file))
      expect(m.size).toBe(info.bytes)
      expect(m.database).toBe(db)
      expect(m.schema).toBe('public')
      expect(m.ledger_version).toBe(12)
      expect(m.purpose).toBe('pre-migration')
      expect(m.pg_dump_major).toBeGreaterThanOrEqual(15)
      expect(m.server_version_num).toBeGreaterThanOrEqual(150_000)
      expect(m.row_counts).toEqual({nchat_audit: 1000, nchat_channels: 5, nchat_messages: 2000, nchat_reactions: 300, nchat_users: 50})
      expect(Date.parse(m.created_at)).toBeGreaterThan(Date.now() - 60_000)
      expect(m.toc_entries).toBeGreaterThan(10)

      const copy = `${db}_copy`
      restoreWithPgRestore(info.file, copy)
      const copySql = dbSql(copy, 1)
      try {
        for (const t of [...TABLES, 'schema_migrations']) {
          expect(await tableDigest(copySql, t)).toEqual(await tableDigest(sql, t))
        }
        expect(await ledgerVersion(copySql)).toBe(12)
      } finally {
        await copySql.end({timeout: 2})
      }

      const verified = await verifyBackup({file: info.file, tools})
      expect(verified.manifest).toEqual(m)
      expect(verified.entries).toBe(m.toc_entries)

      if (docker) {
        const lines = docker.lines()
        assertCleanDockerLog(lines)
        const dump = lines.find((a) => a.includes('pg_dump') && !a.includes('--version'))!
        expect(dump.slice(0, 6)).toEqual(['exec', '-i', '-e', 'PGAPPNAME', '-e', 'PGPASSWORD'])
        expect(dump).toContain('nchat_postgres')
        expect(dump.some((a) => a.startsWith('--snapshot='))).toBe(true)
        // The listings read the dump on stdin: no host path is handed to the container.
        expect(lines.filter((a) => a.includes('pg_restore')).every((a) => !a.some((x) => x.startsWith(root)))).toBe(true)
      }
    },
    T,
  )

  it(
    "counts rows in the dump's own snapshot while the app keeps writing",
    async () => {
      db = await createTestDb(admin, {audit: 50_000})
      root = tempDir()
      if (mode_ === 'docker') docker = useDockerStandIn(root)
      const target = makeTarget({backupDir: path.join(root, 'b'), database: db, mode: mode_})
      const tools = await PgTools.create(target)
      sql = dbSql(db, 4)
      const writer = dbSql(db, 1)
      let writing = true
      let inserted = 0
      const loop = (async () => {
        while (writing) {
          await writer`insert into nchat_audit(what) values ('concurrent')`
          await writer`insert into nchat_reactions(message_id, emoji) values (1, ':x:')`
          inserted++
        }
      })()
      try {
        await waitFor(async () => inserted > 5)
        const info = await takeBackup({ledgerVersion: 12, schema: 'public', sql, tables: TABLES, target, tools})
        writing = false
        await loop
        expect(inserted).toBeGreaterThan(5)
        const copy = `${db}_snap`
        restoreWithPgRestore(info.file, copy)
        const copySql = dbSql(copy, 1)
        try {
          for (const t of TABLES) {
            const [{n}] = await copySql.unsafe<{n: number}[]>(`select count(*)::int as n from ${t}`)
            expect({n, t}).toEqual({n: info.manifest.row_counts[t], t})
          }
        } finally {
          await copySql.end({timeout: 2})
        }
      } finally {
        writing = false
        await loop.catch(() => {})
        await writer.end({timeout: 2})
      }
    },
    T,
  )

  it(
    'on Ctrl+C stops pg_dump, ends its server session (even when docker exec leaves it running), deletes the partial file',
    async () => {
      db = await createTestDb(admin)
      root = tempDir()
      if (mode_ === 'docker') {
        docker = useDockerStandIn(root)
        process.env.FAKE_DOCKER_NO_SIGNALS = '1'
      }
      const backupDir = path.join(root, 'b')
      const target = makeTarget({backupDir, database: db, mode: mode_})
      const scope = createRunScope()
      const tools = await PgTools.create(target, scope)
      sql = dbSql(db, 4)
      // Our own pool carries the same APP_NAME: a reserved session must survive the cancel.
      const mine = await sql.reserve()
      const [{pid: myPid}] = await mine<{pid: number}[]>`select pg_backend_pid() as pid`
      // A session holding an exclusive lock makes pg_dump wait.
      const locker = dbSql(db, 1)
      let release!: () => void
      const released = new Promise<void>((r) => {
        release = r
      })
      const holding = locker.begin(async (tx) => {
        await tx`lock table nchat_audit in access exclusive mode`
        await released
      })
      try {
        const run = takeBackup({ledgerVersion: 12, schema: 'public', sql, tables: ['nchat_users'], target, tools})
        run.catch(() => {})
        const dumpApp = `${APP_NAME}-dump`
        await waitFor(async () => (await admin`select 1 from pg_stat_activity where application_name = ${dumpApp} and wait_event_type = 'Lock'`).length > 0)
        await scope.abort()
        const error = await run.then(
          () => undefined,
          (e: unknown) => e,
        )
        expect(error).toBeInstanceOf(CancelledError)
        expect((error as Error).message).toContain(backupDir)
        await waitFor(async () => (await admin`select 1 from pg_stat_activity where application_name = ${dumpApp}`).length === 0, 10_000)
        expect(fs.readdirSync(backupDir)).toEqual(['.nself-e2ee'])
        expect(fs.readdirSync(path.join(backupDir, '.nself-e2ee'))).toEqual([])
        const [{pid}] = await mine<{pid: number}[]>`select pg_backend_pid() as pid`
        expect(pid).toBe(myPid)
      } finally {
        release()
        await holding.catch(() => {})
        mine.release()
        await locker.end({timeout: 2})
      }
    },
    T,
  )
})

describe('backup folder and disk errors', () => {
  let db = ''
  let sql: Sql | undefined
  let root = ''
  const mounts: string[] = []

  afterEach(async () => {
    for (const m of mounts.splice(0)) {
      try {
        execFileSync('umount', [m])
      } catch {
        // not mounted
      }
    }
    await sql?.end({timeout: 2})
    sql = undefined
    if (db) await dropTestDb(admin, db)
    db = ''
    if (root) fs.rmSync(root, {force: true, recursive: true})
  })

  function tryMount(dir: string, options: string): boolean {
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir], {stdio: 'ignore'})
      mounts.push(dir)
      return true
    } catch {
      return false
    }
  }

  it(
    'tightens an existing folder that others can read to 0700 and says so',
    async () => {
      db = await createTestDb(admin, {audit: 10, messages: 10})
      root = tempDir()
      const backupDir = path.join(root, 'loose')
      fs.mkdirSync(backupDir, {mode: 0o755})
      fs.chmodSync(backupDir, 0o755)
      const target = makeTarget({backupDir, database: db, mode: 'local'})
      sql = dbSql(db)
      const logs: string[] = []
      await takeBackup({ledgerVersion: null, log: (l) => logs.push(l), schema: 'public', sql, tables: TABLES, target, tools: await PgTools.create(target)})
      expect(mode(backupDir)).toBe(0o700)
      expect(logs.some((l) => l.includes(backupDir) && l.includes('755'))).toBe(true)
    },
    T,
  )

  it(
    'refuses a backup folder under a file, naming it and saying so',
    async () => {
      db = await createTestDb(admin, {audit: 10, messages: 10})
      root = tempDir()
      const file = path.join(root, 'a-file')
      fs.writeFileSync(file, 'x')
      const backupDir = path.join(file, 'backups')
      const target = makeTarget({backupDir, database: db, mode: 'local'})
      sql = dbSql(db)
      const error = await takeBackup({ledgerVersion: null, schema: 'public', sql, tables: TABLES, target, tools: await PgTools.create(target)}).catch(
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(UserError)
      expect((error as Error).message).toContain(backupDir)
      expect((error as Error).message).toMatch(/cannot be created: part of its path is a file, not a folder\.$/)
    },
    T,
  )

  /** Outside CI (no root) these tests cannot make a tmpfs; in CI (root) a skip would hide a regression, so fail. */
  function mountUnavailable(ctx: {skip: () => void}): void {
    if (process.env.CI) throw new Error('cannot mount a tmpfs for this test (CI runs as root and must be able to)')
    ctx.skip()
  }

  it(
    'refuses a read-only backup folder (as root, permissions do not stop writes: a read-only mount does)',
    async (ctx) => {
      root = tempDir()
      const ro = path.join(root, 'ro')
      fs.mkdirSync(ro)
      if (!tryMount(ro, 'ro,size=1m')) mountUnavailable(ctx)
      db = await createTestDb(admin, {audit: 10, messages: 10})
      const target = makeTarget({backupDir: ro, database: db, mode: 'local'})
      sql = dbSql(db)
      const error = await takeBackup({ledgerVersion: null, schema: 'public', sql, tables: TABLES, target, tools: await PgTools.create(target)}).catch(
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(UserError)
      expect((error as Error).message).toContain(ro)
      expect((error as Error).message).toMatch(/not writable \(E(ROFS|ACCES)\)/)
    },
    T,
  )

  it(
    'reports a full disk in one sentence naming the file, stops pg_dump and leaves no partial file',
    async (ctx) => {
      root = tempDir()
      const small = path.join(root, 'small')
      fs.mkdirSync(small)
      if (!tryMount(small, 'size=256k,mode=0700')) mountUnavailable(ctx)
      db = await createTestDb(admin, {bigBodies: true, messages: 20_000})
      const target = makeTarget({backupDir: small, database: db, mode: 'local'})
      sql = dbSql(db)
      const error = await takeBackup({ledgerVersion: null, schema: 'public', sql, tables: TABLES, target, tools: await PgTools.create(target)}).catch(
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(UserError)
      const message = (error as Error).message
      expect(message).toMatch(/disk is full \(ENOSPC\)/)
      expect(message).toMatch(new RegExp(`${small}/nchat_\\d{8}_\\d{6}\\.dump`))
      expect(message.split('. ').length).toBe(1)
      expect(fs.readdirSync(small)).toEqual(['.nself-e2ee'])
      expect(fs.readdirSync(path.join(small, '.nself-e2ee'))).toEqual([])
      await waitFor(async () => (await admin`select 1 from pg_stat_activity where application_name = ${`${APP_NAME}-dump`}`).length === 0, 10_000)
    },
    T,
  )
})

describe('verifyBackup and listing', () => {
  let db = ''
  let sql: Sql | undefined
  let root = ''
  let docker: DockerEnv | undefined

  afterEach(async () => {
    docker?.restore()
    docker = undefined
    await sql?.end({timeout: 2})
    sql = undefined
    if (db) await dropTestDb(admin, db)
    db = ''
    if (root) fs.rmSync(root, {force: true, recursive: true})
  })

  it.each(['local', 'docker'] as const)(
    'refuses a truncated file, a corrupted byte, a manifest checksum mismatch and a missing manifest, naming the file (%s)',
    async (mode_) => {
      db = await createTestDb(admin)
      root = tempDir()
      if (mode_ === 'docker') docker = useDockerStandIn(root)
      const target = makeTarget({backupDir: path.join(root, 'b'), database: db, mode: mode_})
      const tools = await PgTools.create(target)
      sql = dbSql(db)
      const info = await takeBackup({ledgerVersion: 12, schema: 'public', sql, tables: TABLES, target, tools})
      await expect(verifyBackup({file: info.file, tools})).resolves.toMatchObject({manifest: {sha256: info.manifest.sha256}})

      const truncated = copyBackup(info.file, 'truncated')
      fs.truncateSync(truncated, Math.floor(info.bytes / 2))
      await expect(verifyBackup({file: truncated, tools})).rejects.toThrow(
        new RegExp(`^The backup ${truncated} is \\d+ bytes but its manifest says ${info.bytes}`),
      )

      const corrupt = copyBackup(info.file, 'corrupt')
      const buf = fs.readFileSync(corrupt)
      buf[Math.floor(buf.length * 0.6)] ^= 0xff
      fs.writeFileSync(corrupt, buf)
      await expect(verifyBackup({file: corrupt, tools})).rejects.toThrow(`The backup ${corrupt} does not match the sha256 checksum in its manifest`)

      const badManifest = copyBackup(info.file, 'badsum')
      const m = JSON.parse(fs.readFileSync(manifestPathFor(badManifest), 'utf8')) as Manifest
      m.sha256 = '0'.repeat(64)
      fs.writeFileSync(manifestPathFor(badManifest), JSON.stringify(m))
      await expect(verifyBackup({file: badManifest, tools})).rejects.toThrow(`The backup ${badManifest} does not match the sha256 checksum`)

      const unparseable = copyBackup(info.file, 'garbled')
      fs.writeFileSync(manifestPathFor(unparseable), '{"format": ')
      await expect(verifyBackup({file: unparseable, tools})).rejects.toThrow(
        `The backup ${unparseable} cannot be checked: the backup manifest ${manifestPathFor(unparseable)} is not valid JSON`,
      )

      const orphan = copyBackup(info.file, 'orphan')
      fs.rmSync(manifestPathFor(orphan))
      await expect(verifyBackup({file: orphan, tools})).rejects.toThrow(
        `The backup ${orphan} cannot be checked: the backup manifest ${manifestPathFor(orphan)} does not exist`,
      )

      const missing = path.join(root, 'b', 'nope.dump')
      await expect(verifyBackup({file: missing, tools})).rejects.toThrow(`The backup file ${missing} does not exist.`)

      // Without a manifest (an nself backup): accepted when whole, refused when truncated or not a dump.
      const synthesized = await verifyBackup({file: orphan, requireManifest: false, tools})
      expect(synthesized.manifest).toMatchObject({database: db, sha256: info.manifest.sha256, size: info.bytes, synthesized: true})
      fs.truncateSync(orphan, Math.floor(info.bytes * 0.8))
      await expect(verifyBackup({file: orphan, requireManifest: false, tools})).rejects.toThrow(`The backup ${orphan} cannot be read to the end by pg_restore`)
      fs.writeFileSync(orphan, 'not a dump at all')
      await expect(verifyBackup({file: orphan, requireManifest: false, tools})).rejects.toThrow(`The backup ${orphan} is not readable by pg_restore`)

      if (docker) assertCleanDockerLog(docker.lines())
    },
    T,
  )

  it(
    'lists backups newest first, filters by database and purpose',
    async () => {
      db = await createTestDb(admin, {audit: 10, messages: 10})
      root = tempDir()
      const dir = path.join(root, 'b')
      const target = makeTarget({backupDir: dir, database: db, mode: 'local'})
      const tools = await PgTools.create(target)
      sql = dbSql(db)
      const first = await takeBackup({ledgerVersion: 12, schema: 'public', sql, tables: TABLES, target, tools})
      const second = await takeBackup({ledgerVersion: 16, purpose: 'pre-rollback', schema: 'public', sql, tables: TABLES, target, tools})
      expect(second.file).not.toBe(first.file)
      fs.writeFileSync(path.join(dir, 'junk.dump.manifest.json'), 'nope')

      const all = await listBackups(dir, db)
      expect(all.map((b) => b.file)).toEqual([second.file, first.file])
      expect(all[0].manifest).toEqual(second.manifest)
      expect(await listBackups(dir, 'other_db')).toEqual([])
      expect((await newestBackup(dir, db))?.file).toBe(second.file)
      expect((await newestBackup(dir, db, 'pre-migration'))?.file).toBe(first.file)
      expect(await newestBackup(dir, db, 'manual')).toBeUndefined()
      expect(await listBackups(path.join(root, 'none'))).toEqual([])
    },
    T,
  )

  it(
    "backups started in the same second all succeed, with distinct names in nself's <PROJECT>_<YYYYMMDD_HHMMSS>.dump pattern",
    async () => {
      db = await createTestDb(admin, {audit: 10, messages: 10})
      root = tempDir()
      const dir = path.join(root, 'b')
      const target = makeTarget({backupDir: dir, database: db, mode: 'local'})
      const tools = await PgTools.create(target)
      // Three runs, each on its own connection as separate processes would be, started just after a second
      // begins: their first choice of name is the same.
      const clients = [dbSql(db, 1), dbSql(db, 1), dbSql(db, 1)]
      let infos: BackupInfo[]
      try {
        await Promise.all(clients.map((c) => c`select 1`))
        await new Promise((resolve) => {
          setTimeout(resolve, 1000 - (Date.now() % 1000) + 20)
        })
        infos = await Promise.all(clients.map((c) => takeBackup({ledgerVersion: 12, schema: 'public', sql: c, tables: TABLES, target, tools})))
      } finally {
        await Promise.all(clients.map((c) => c.end({timeout: 2})))
      }
      expect(new Set(infos.map((i) => i.file)).size).toBe(3)
      for (const info of infos) {
        expect(path.basename(info.file)).toMatch(/^nchat_\d{8}_\d{6}\.dump$/)
        await expect(verifyBackup({database: db, file: info.file, tools})).resolves.toMatchObject({manifest: {sha256: info.manifest.sha256}})
        expect(mode(info.file)).toBe(0o600)
      }
      expect(fs.readdirSync(dir).filter((f) => f.endsWith('.partial'))).toEqual([])
    },
    T,
  )

  it(
    "refuses another database's dump behind a manifest edited to name this database, naming the dump's own database",
    async () => {
      db = await createTestDb(admin, {audit: 10, messages: 10})
      const other = await createTestDb(admin, {audit: 10, messages: 10})
      root = tempDir()
      const dir = path.join(root, 'b')
      const otherSql = dbSql(other)
      try {
        const tools = await PgTools.create(makeTarget({backupDir: dir, database: db, mode: 'local'}))
        sql = dbSql(db)
        const mine = await takeBackup({
          ledgerVersion: 12,
          schema: 'public',
          sql,
          tables: TABLES,
          target: makeTarget({backupDir: dir, database: db, mode: 'local'}),
          tools,
        })
        const theirs = await takeBackup({
          ledgerVersion: 12,
          schema: 'public',
          sql: otherSql,
          tables: TABLES,
          target: makeTarget({backupDir: path.join(root, 'o'), database: other, mode: 'local'}),
          tools,
        })
        // The foreign dump under a name of this project, with this database's manifest edited to describe it.
        const forged = mine.file.replace(/\.dump$/, '_x.dump')
        fs.copyFileSync(theirs.file, forged)
        const manifest = {...mine.manifest, file: path.basename(forged), sha256: sha256(forged), size: fs.statSync(forged).size}
        fs.writeFileSync(forged + MANIFEST_SUFFIX, JSON.stringify(manifest))
        const error = await verifyBackup({database: db, file: forged, tools}).catch((e: unknown) => e)
        expect(error).toBeInstanceOf(UserError)
        expect((error as Error).message).toBe(`The backup ${forged} is a dump of the database "${other}", not of "${db}" (its manifest says "${db}").`)
        // Without naming the database the manifest itself is caught out by the dump's header.
        await expect(verifyBackup({file: forged, tools})).rejects.toThrow(`is a dump of the database "${other}", but its manifest says "${db}"`)
        await expect(verifyBackup({database: db, file: mine.file, tools})).resolves.toBeDefined()
      } finally {
        await otherSql.end({timeout: 2})
        await dropTestDb(admin, other)
      }
    },
    T,
  )

  it(
    'never puts the password in argv, logs or messages, even when pg_dump fails',
    async () => {
      db = await createTestDb(admin, {audit: 10, messages: 10})
      root = tempDir()
      docker = useDockerStandIn(root)
      const target = makeTarget({backupDir: path.join(root, 'b'), database: db, mode: 'docker'})
      const tools = await PgTools.create(target)
      sql = dbSql(db)
      const logs: string[] = []
      await takeBackup({ledgerVersion: 12, log: (l) => logs.push(l), schema: 'public', sql, tables: TABLES, target, tools})
      // A failing run: the role does not exist inside the "container".
      const bad = makeTarget({backupDir: path.join(root, 'b'), database: db, mode: 'docker'})
      bad.conn.user = 'no_such_role_e2ee'
      const error = await takeBackup({
        ledgerVersion: 12,
        log: (l) => logs.push(l),
        schema: 'public',
        sql,
        tables: TABLES,
        target: bad,
        tools: await PgTools.create(bad),
      }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(UserError)
      expect((error as Error).message).toMatch(/^pg_dump failed writing .*no_such_role_e2ee/)
      for (const text of [...logs, (error as Error).message, (error as UserError).hint ?? '', fs.readFileSync(docker.log, 'utf8')]) {
        expect(text).not.toContain(SECRET)
      }
      assertCleanDockerLog(docker.lines())
      expect(fs.readdirSync(path.join(root, 'b')).filter((f) => f.endsWith('.partial'))).toEqual([])
      expect(fs.readdirSync(path.join(root, 'b', '.nself-e2ee')).filter((f) => f.endsWith('.partial'))).toEqual([])
    },
    T,
  )
})
