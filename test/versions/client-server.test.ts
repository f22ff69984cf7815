// Client tools of one major version against a server of another, end to end through the CLI. The servers are
// PostgreSQL 14, 16, 17 and 18 from the pinned npm packages (scripts/pg-servers.sh, ports 5414…5418) beside the
// machine's 15; the clients are this machine's 15 and Debian's 17 and 18 (scripts/pg-clients.sh). Nothing is
// faked: every refusal and every restore below is a real pg_dump/pg_restore meeting a real server.
import {execFileSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync} from 'node:fs'
import path from 'node:path'
import postgres from 'postgres'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadV030} from '../../scripts/v030-fixture.mjs'
import {fakeDockerEnv, parseJson, runCli, tmpDir} from '../helpers/cli.js'
import {restoreArchive} from '../../src/archive/restore.js'
import {resolveTarget} from '../../src/connection/target.js'
import {PgTools} from '../../src/connection/tools.js'
import {REPO_ROOT} from '../helpers/fixture.js'

const T = 240_000
const HOST = '127.0.0.1'
let servers: Record<number, number> = {}
let clients: Record<number, string> = {}
const cleanups: Array<() => Promise<void> | void> = []

function lines(out: string): Record<number, string> {
  return Object.fromEntries(
    out
      .trim()
      .split('\n')
      .map((l) => l.split(' '))
      .map(([k, v]) => [Number(k), v]),
  )
}

beforeAll(() => {
  servers = Object.fromEntries(
    Object.entries(lines(execFileSync(path.join(REPO_ROOT, 'scripts', 'pg-servers.sh'), ['start'], {encoding: 'utf8'}))).map(([k, v]) => [k, Number(v)]),
  )
  clients = lines(execFileSync(path.join(REPO_ROOT, 'scripts', 'pg-clients.sh'), {encoding: 'utf8', timeout: 180_000}))
}, 240_000)

afterAll(async () => {
  while (cleanups.length) await cleanups.pop()!()
})

function sqlOn(port: number, database: string): postgres.Sql {
  return postgres({
    connection: {application_name: 'nself-e2ee-tests'},
    database,
    host: HOST,
    idle_timeout: 5,
    max: 1,
    onnotice: () => {},
    port,
    user: 'postgres',
  })
}

/** A v0.3.0 database on the server of `major`; dropped (with anything made beside it) after the file. */
async function v030On(major: number): Promise<{name: string; port: number}> {
  const port = servers[major] ?? 5432
  const name = `e2ee_v${major}_${Math.random().toString(16).slice(2, 10)}`
  const admin = sqlOn(port, 'postgres')
  await admin.unsafe(`CREATE DATABASE ${name}`)
  await admin.end()
  const sql = sqlOn(port, name)
  await loadV030(sql, {channels: 5, ledger: 'guide', messages: 400, users: 20})
  await sql.end()
  cleanups.push(async () => {
    const a = sqlOn(port, 'postgres')
    const rows = await a<{datname: string}[]>`select datname from pg_database where datname = ${name} or datname like ${`${name}\\_e2ee\\_%`}`
    for (const r of rows) await a.unsafe(`DROP DATABASE IF EXISTS "${r.datname}" WITH (FORCE)`)
    await a.end()
  })
  return {name, port}
}

async function ledger(port: number, database: string): Promise<number> {
  const sql = sqlOn(port, database)
  try {
    const [{v}] = await sql<{v: number}[]>`select max(version)::int as v from schema_migrations`
    return v
  } finally {
    await sql.end()
  }
}

/** The environment whose PATH finds client tools `major` first (15: the machine's own). */
function withClient(major: number): Record<string, string> {
  return major === 15 ? {} : {PATH: `${clients[major]}${path.delimiter}${process.env.PATH}`}
}

function local(db: {name: string; port: number}): string[] {
  return ['--local', '--host', HOST, '--port', String(db.port), '--user', 'postgres', '--database', db.name]
}

function backupDir(): string {
  const t = tmpDir()
  cleanups.push(t.cleanup)
  return path.join(t.dir, 'backups')
}

describe('a newer pg_restore into an older server (it sends SET transaction_timeout)', () => {
  for (const [client, server] of [
    [17, 16],
    [18, 14],
  ] as const) {
    it(
      `client ${client} with server ${server}: migrate (backup, dry-run clone) and a restore rollback work end to end`,
      async () => {
        const db = await v030On(server)
        const dir = backupDir()
        const env = withClient(client)
        const st = await runCli(['db', 'e2ee', 'status', '--json', ...local(db)], {env})
        expect(st.code, st.stderr).toBe(0)
        expect(parseJson(st.stdout).tools.versions).toEqual({pg_dump: client, pg_restore: client, psql: client})

        const m = await runCli(['db', 'e2ee', 'migrate', '--yes', '--json', ...local(db), '--backup-dir', dir], {env})
        expect(m.code, m.stderr).toBe(0)
        expect(await ledger(db.port, db.name)).toBe(16)
        // pg_dump 16+ compresses with zstd level 1 (docs/benchmarks-compression.md).
        const manifests = readdirSync(path.join(dir, '.nself-e2ee')).filter((f) => f.endsWith('.manifest.json'))
        expect(manifests.map((f) => JSON.parse(readFileSync(path.join(dir, '.nself-e2ee', f), 'utf8')))).toMatchObject([
          {compression: '--compress=zstd:1', pg_dump_major: client},
        ])
        const r = await runCli(['db', 'e2ee', 'rollback', '--yes', '--json', ...local(db), '--backup-dir', dir], {env})
        expect(r.code, r.stderr).toBe(0)
        expect(parseJson(r.stdout)).toMatchObject({after: 12, before: 16, ok: true, strategy: 'restore'})
        expect(await ledger(db.port, db.name)).toBe(12)
      },
      T,
    )
  }

  it(
    'client 17 with server 16: any other pg_restore error still stops the restore and is the one named',
    async () => {
      const db = await v030On(16)
      const dir = backupDir()
      execFileSync('mkdir', ['-p', dir])
      const file = path.join(dir, 'whole.dump')
      execFileSync(path.join(clients[17], 'pg_dump'), ['-h', HOST, '-p', String(db.port), '-U', 'postgres', '-Fc', '-f', file, db.name])
      const oldPath = process.env.PATH
      process.env.PATH = `${clients[17]}${path.delimiter}${oldPath}`
      try {
        const target = resolveTarget({database: db.name, host: HOST, local: true, port: db.port, projectDir: path.dirname(dir), user: 'postgres'}, {})
        const tools = await PgTools.create(target)
        // Into the database the dump came from: its objects exist, so the first CREATE (a function) fails.
        await expect(restoreArchive({database: db.name, file, target, tools, total: 1})).rejects.toThrow(
          /^function "nchat_set_updated_at" already exists with same argument types \(Command was: CREATE FUNCTION/,
        )
      } finally {
        process.env.PATH = oldPath
      }
    },
    T,
  )

  it(
    'client 17 in the container (docker exec) with server 16: the dry run restores its clone',
    async () => {
      const db = await v030On(16)
      const dir = backupDir()
      const log = path.join(path.dirname(dir), 'docker.log')
      const env = {...fakeDockerEnv('nchat_postgres', log), PGHOST: HOST, PGPORT: String(db.port)}
      env.PATH = `${clients[17]}${path.delimiter}${env.PATH}`
      const r = await runCli(
        [
          'db',
          'e2ee',
          'dryrun',
          '--json',
          '--container',
          'nchat_postgres',
          '--host',
          HOST,
          '--port',
          String(db.port),
          '-U',
          'postgres',
          '-d',
          db.name,
          '--backup-dir',
          dir,
        ],
        {env},
      )
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout + r.stderr).toMatch(/pg_restore 17 \(in container nchat_postgres\) for server 16/)
      expect(await ledger(db.port, db.name)).toBe(12)
    },
    T,
  )
})

describe('unsupported combinations are refused before anything is written', () => {
  it(
    'pg_dump 15 against server 17: one sentence naming both versions and what to install; no backup, ledger unchanged',
    async () => {
      const db = await v030On(17)
      const dir = backupDir()
      const r = await runCli(['db', 'e2ee', 'migrate', '--yes', ...local(db), '--backup-dir', dir], {env: withClient(15)})
      expect(r.code).toBe(1)
      expect(r.stderr).toMatch(/pg_dump 15 \(local client tools\) cannot dump the PostgreSQL 17 server/)
      expect(r.stderr).toMatch(/postgresql-client-17/)
      expect(r.stderr).not.toMatch(/\n\s+at /)
      expect(await ledger(db.port, db.name)).toBe(12)
      expect(existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.dump')) : []).toEqual([])
    },
    T,
  )

  it(
    'a backup pg_dump 17 wrote, read by pg_restore 15: named as such from the manifest, not "corrupt"; nothing restored',
    async () => {
      const db = await v030On(16)
      const dir = backupDir()
      const m = await runCli(['db', 'e2ee', 'migrate', '--yes', ...local(db), '--backup-dir', dir, '--skip-dryrun'], {env: withClient(17)})
      expect(m.code, m.stderr).toBe(0)
      const r = await runCli(['db', 'e2ee', 'rollback', '--yes', ...local(db), '--backup-dir', dir], {env: withClient(15)})
      expect(r.code).toBe(1)
      expect(r.stderr).toMatch(
        /was written by pg_dump 17 \(its manifest says so\), and pg_restore 15 cannot read that archive format; the file itself is not damaged/,
      )
      expect(r.stderr).toMatch(/postgresql-client-17/)
      expect(r.stderr).not.toMatch(/corrupt/)
      expect(await ledger(db.port, db.name)).toBe(16)
    },
    T,
  )
})
