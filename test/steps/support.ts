/**
 * Shared by test/steps/*.test.ts: a small nChat-like database of our own (not the fixture of the other
 * tests), Target objects built directly, and the docker stand-in's environment.
 */
import {randomBytes} from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {connect, type Sql} from '../../src/connection/connect.js'
import type {Target} from '../../src/connection/target.js'
import {SERVER} from '../helpers/server.js'

export const PG = SERVER
export const SECRET = 's3cret-not-in-argv'
export const CONTAINER = 'nchat_postgres'
export const STANDIN_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin')

export function hex(bytes = 4): string {
  return randomBytes(bytes).toString('hex')
}

export function makeTarget(o: {database: string; mode: 'docker' | 'local'; backupDir: string; password?: string}): Target {
  return {
    backupDir: o.backupDir,
    conn: {database: o.database, host: PG.host, password: o.password ?? SECRET, port: PG.port, user: PG.user},
    containerCandidates: [CONTAINER],
    envFiles: [],
    mode: o.mode,
    projectDir: path.dirname(o.backupDir),
    projectName: 'nchat',
    schema: 'public',
    sources: {
      backupDir: 'test',
      container: 'test',
      database: 'test',
      host: 'test',
      password: 'test',
      port: 'test',
      projectName: 'test',
      user: 'test',
    },
  }
}

export function adminSql(database = 'postgres'): Sql {
  return connect({database, host: PG.host, port: PG.port, user: PG.user}, {max: 3})
}

export function dbSql(database: string, max = 3): Sql {
  return connect({database, host: PG.host, password: SECRET, port: PG.port, user: PG.user}, {max})
}

export const TABLES = ['nchat_users', 'nchat_channels', 'nchat_messages', 'nchat_reactions', 'nchat_audit']

/** Create `e2ee_c_<hex>` with five tables (messages -> channels/users, reactions -> messages, audit alone). */
export async function createTestDb(admin: Sql, o: {messages?: number; audit?: number; bigBodies?: boolean} = {}): Promise<string> {
  const name = `e2ee_c_${hex()}`
  await admin.unsafe(`CREATE DATABASE ${name}`)
  const sql = connect({database: name, host: PG.host, port: PG.port, user: PG.user}, {max: 1})
  let ok = false
  try {
    await sql.unsafe(`
      create table nchat_users (id uuid primary key default gen_random_uuid(), name text not null);
      create table nchat_channels (id uuid primary key default gen_random_uuid(), name text not null unique);
      create table nchat_messages (
        id bigserial primary key,
        channel_id uuid not null references nchat_channels(id) on delete cascade,
        user_id uuid not null references nchat_users(id) on delete cascade,
        body text not null,
        created_at timestamptz not null default now());
      create index nchat_messages_channel_idx on nchat_messages(channel_id, created_at);
      create table nchat_reactions (
        id bigserial primary key,
        message_id bigint not null references nchat_messages(id) on delete cascade,
        emoji text not null check (emoji <> ''));
      create table nchat_audit (id bigserial primary key, what text not null);
      comment on table nchat_messages is 'chat messages';
      create table schema_migrations (version integer primary key, executed_at timestamptz not null default now());
      insert into schema_migrations(version) select generate_series(1, 12);
      insert into nchat_users(name) select 'user ' || g from generate_series(1, 50) g;
      insert into nchat_channels(name) select 'channel ' || g from generate_series(1, 5) g;
    `)
    const body = o.bigBodies ? 'repeat(md5(g::text || random()::text), 4)' : "'hello ' || g"
    await sql.unsafe(`
      insert into nchat_messages(channel_id, user_id, body)
      select (select id from nchat_channels order by name offset (g % 5) limit 1),
             (select id from nchat_users order by name offset (g % 50) limit 1), ${body}
      from generate_series(1, ${o.messages ?? 2000}) g;
      insert into nchat_reactions(message_id, emoji) select g, ':+1:' from generate_series(1, ${Math.min(300, o.messages ?? 2000)}) g;
      insert into nchat_audit(what) select 'event ' || g from generate_series(1, ${o.audit ?? 1000}) g;
    `)
    ok = true
  } finally {
    await sql.end({timeout: 2})
    if (!ok) await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  }
  return name
}

/** Drop a test database and every database whose name starts with it (clones, restores, kept copies). */
export async function dropTestDb(admin: Sql, name: string): Promise<void> {
  const rows = await admin<{datname: string}[]>`select datname from pg_database where datname = ${name} or starts_with(datname, ${`${name}_`})`
  for (const r of rows) {
    await admin.unsafe(`DROP DATABASE IF EXISTS "${r.datname}" WITH (FORCE)`)
  }
}

/** Databases whose name starts with `<name>_`. */
export async function derivedDbs(admin: Sql, name: string): Promise<string[]> {
  const rows = await admin<{datname: string}[]>`select datname from pg_database where starts_with(datname, ${`${name}_`}) order by datname`
  return rows.map((r) => r.datname)
}

/** A digest of a table's whole content, to compare two databases. */
export async function tableDigest(sql: Sql, table: string): Promise<{rows: number; md5: string | null}> {
  const [r] = await sql.unsafe<{rows: number; md5: string | null}[]>(
    `select count(*)::int as rows, md5(string_agg(t::text, '|' order by t::text)) as md5 from ${table} t`,
  )
  return r
}

export async function ledgerVersion(sql: Sql): Promise<number | null> {
  const [{v}] = await sql<{v: number | null}[]>`select max(version) as v from schema_migrations`
  return v
}

export function tempDir(prefix = 'e2ee-steps-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

export interface DockerEnv {
  log: string
  hide: string
  lines(): string[][]
  restore(): void
}

/** Put the stand-in first on PATH with the secret guard and the argv log; returns a restorer. */
export function useDockerStandIn(hide: string): DockerEnv {
  const saved = {...process.env}
  const log = path.join(tempDir('e2ee-dockerlog-'), 'docker.log')
  process.env.PATH = `${STANDIN_DIR}:${process.env.PATH}`
  process.env.FAKE_DOCKER_CONTAINER = CONTAINER
  process.env.FAKE_DOCKER_LOG = log
  process.env.FAKE_DOCKER_SECRET = SECRET
  process.env.FAKE_DOCKER_HIDE = hide
  return {
    hide,
    lines: () =>
      fs.existsSync(log)
        ? fs
            .readFileSync(log, 'utf8')
            .trim()
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as string[])
        : [],
    log,
    restore() {
      fs.rmSync(path.dirname(log), {force: true, recursive: true})
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k]
      Object.assign(process.env, saved)
    },
  }
}

/** Every docker call was `exec -i` / `cp` / `inspect`, never with a TTY, and no argument holds the secret. */
export function assertCleanDockerLog(lines: string[][]): void {
  for (const argv of lines) {
    const text = JSON.stringify(argv)
    if (text.includes(SECRET)) throw new Error(`docker argv holds the secret: ${text}`)
    if (argv.some((a) => a === '-t' || a === '--tty' || (/^-[a-z]*t[a-z]*$/.test(a) && argv[0] === 'exec' && argv.indexOf(a) < argv.indexOf(CONTAINER)))) {
      throw new Error(`docker argv asks for a TTY: ${text}`)
    }
    if (argv[0] === 'exec' && argv[1] !== '-i') throw new Error(`docker exec without -i first: ${text}`)
    if (argv.some((a, i) => argv[i - 1] === '-e' && a.includes('='))) throw new Error(`docker -e with a value: ${text}`)
  }
}

export async function waitFor<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 20_000, stepMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error('waitFor: timed out')
    await new Promise((r) => setTimeout(r, stepMs))
  }
}
