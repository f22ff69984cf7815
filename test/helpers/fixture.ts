// Test fixtures for integration tests against the real PostgreSQL (PG* variables, default 127.0.0.1:5432).
//
// Every test makes its own database (createV030Database) and drops it at the end.
// Nothing here depends on src/: the SQL-level tests run the migration files either with psql
// (applyFileWithPsql, every statement autocommits) or the way the engine does
// (applyFileAsEngine: transactional part in one transaction, then the tail statements alone).

import {execFile} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {readFile} from 'node:fs/promises'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import {promisify} from 'node:util'
import postgres from 'postgres'
import {loadV030, loadV030Reference} from '../../scripts/v030-fixture.mjs'
import {SERVER} from './server.js'

const execFileP = promisify(execFile)

export const ADMIN = SERVER
export const adminUrl = `postgres://${ADMIN.user}@${ADMIN.host}:${ADMIN.port}/postgres`

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const MIGRATIONS_DIR = path.join(REPO_ROOT, 'migrations')
export const FIXTURES_DIR = path.join(REPO_ROOT, 'test', 'fixtures')
export const V030_SCHEMA_FILE = path.join(FIXTURES_DIR, 'v030_schema.sql')
export const GUIDE_BY_HAND_FILE = path.join(FIXTURES_DIR, 'guide_014_by_hand.sql')

/** The four migrations of the upgrade, oldest first. */
export const MIGRATIONS = [
  {version: 13, name: '013_e2ee_system'},
  {version: 14, name: '014_e2ee_system'},
  {version: 15, name: '015_voice_calls'},
  {version: 16, name: '016_live_streaming'},
] as const

export type MigrationVersion = (typeof MIGRATIONS)[number]['version']

/** Absolute path of a migration file: migrationFile(14) or migrationFile(14, 'down'). */
export function migrationFile(version: MigrationVersion, direction: 'up' | 'down' = 'up'): string {
  const m = MIGRATIONS.find((x) => x.version === version)
  if (!m) throw new Error(`unknown migration ${version}`)
  return path.join(MIGRATIONS_DIR, direction === 'up' ? `${m.name}.sql` : `${m.name}.down.sql`)
}

/** Columns the migrations add to existing v0.3.0 tables (left out of dataDigest). */
export const MIGRATION_ADDED_COLUMNS: Record<string, string[]> = {
  nchat_messages: ['is_encrypted', 'encrypted_payload', 'sender_device_id', 'encryption_version'],
  nchat_channels: ['enforce_encryption'],
}

/** The v0.3.0 tables with data (createV030Database fills them). */
export const V030_TABLES = ['nchat_users', 'nchat_channels', 'nchat_channel_members', 'nchat_messages', 'nchat_reactions', 'nchat_read_receipts']

export type LedgerShape = 'guide' | 'varchar' | 'bigint-name' | 'none'

export interface V030Options {
  name?: string
  schema?: 'public' | 'nchat'
  ledger?: LedgerShape
  users?: number
  channels?: number
  messages?: number
  /**
   * 'project' (default): this project's first fixture. 'reference': nChat's own documented v0.3.0 layout
   * (schema nchat, its triggers and CHECKs, extensions, auth/storage/hdb_catalog, public.schema_migrations
   * version BIGINT + name); `schema` and `ledger` are then fixed by the layout.
   */
  layout?: 'project' | 'reference'
  /** reference layout: the existing nchat tables use row-level security. */
  rls?: boolean
}

export interface V030Database {
  name: string
  schema: string
  drop(): Promise<void>
}

const IDENT = /^[a-z_][a-z0-9_]{0,62}$/

function ident(name: string): string {
  if (!IDENT.test(name)) throw new Error(`unsafe identifier: ${JSON.stringify(name)}`)
  return `"${name}"`
}

function count(n: number | undefined, dflt: number, min: number): number {
  const v = n ?? dflt
  if (!Number.isInteger(v) || v < min) throw new Error(`invalid count ${v}`)
  return v
}

/**
 * A postgres.js client on database `dbName` (notices silenced).
 * With `schema`, the connection search_path is that schema.
 */
export function connect(dbName: string, opts: {schema?: string; max?: number} = {}): postgres.Sql {
  return postgres({
    ...ADMIN,
    database: dbName,
    max: opts.max ?? 1,
    onnotice: () => {},
    idle_timeout: 5,
    connection: {
      application_name: 'nself-e2ee-tests',
      ...(opts.schema ? {search_path: opts.schema} : {}),
    },
  })
}

/**
 * Creates a fresh v0.3.0 database: schema (in `public` or `nchat`), ledger in the requested shape
 * holding versions 1..12, and deterministic data. Defaults: 50 users, 10 channels, 2000 messages.
 */
export async function createV030Database(opts: V030Options = {}): Promise<V030Database> {
  const name = opts.name ?? `e2ee_t_${randomBytes(4).toString('hex')}`
  const reference = opts.layout === 'reference'
  const schema = reference ? 'nchat' : (opts.schema ?? 'public')
  const ledger = opts.ledger ?? 'guide'
  const users = count(opts.users, 50, 1)
  const channels = count(opts.channels, 10, 1)
  const messages = count(opts.messages, 2000, 0)
  ident(name)
  if (schema !== 'public' && schema !== 'nchat') throw new Error(`unsupported schema ${schema}`)

  const admin = connect('postgres')
  try {
    await admin.unsafe(`CREATE DATABASE ${ident(name)}`)
  } finally {
    await admin.end()
  }

  const db: V030Database = {name, schema, drop: () => dropDatabase(name)}
  const sql = connect(name, {schema})
  try {
    if (reference) await loadV030Reference(sql, {channels, messages, rls: opts.rls ?? false, users})
    else {
      if (schema !== 'public') await sql.unsafe(`CREATE SCHEMA ${ident(schema)}`)
      await loadV030(sql, {channels, ledger, messages, users})
    }
  } catch (error) {
    await sql.end()
    await dropDatabase(name).catch(() => {})
    throw error
  }

  await sql.end()
  return db
}

/** Drops a database, terminating its connections first. No error when it does not exist. */
export async function dropDatabase(name: string): Promise<void> {
  const admin = connect('postgres')
  try {
    await admin.unsafe(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`)
  } finally {
    await admin.end()
  }
}

export interface PsqlOptions {
  /** search_path for the session (default public). */
  schema?: string
  /** Value of the setting nself_e2ee.applied_versions, e.g. '13,14' (unset when undefined or ''). */
  appliedVersions?: string
  /** Stop at the first error and fail (default true). false = like `psql < file` by hand. */
  onErrorStop?: boolean
}

/**
 * Runs a SQL file with psql, one autocommitted statement at a time:
 * `psql -v ON_ERROR_STOP=1 -X -q -h HOST -p PORT -U USER -d DB -f FILE`, with the schema and the
 * applied versions passed through PGOPTIONS. For SQL-level tests only.
 */
export async function applyFileWithPsql(dbName: string, file: string, opts: PsqlOptions = {}): Promise<{stdout: string; stderr: string}> {
  const reference = opts.layout === 'reference'
  const schema = reference ? 'nchat' : (opts.schema ?? 'public')
  ident(schema)
  const pgoptions = [`-c search_path=${schema}`, '-c client_min_messages=warning']
  if (opts.appliedVersions) {
    if (!/^[0-9, ]*$/.test(opts.appliedVersions)) throw new Error('appliedVersions: digits and commas only')
    pgoptions.push(`-c nself_e2ee.applied_versions=${opts.appliedVersions.replaceAll(' ', '')}`)
  }
  const args = [
    '-v',
    `ON_ERROR_STOP=${opts.onErrorStop === false ? 0 : 1}`,
    '-X',
    '-q',
    '-h',
    ADMIN.host,
    '-p',
    String(ADMIN.port),
    '-U',
    ADMIN.user,
    '-d',
    dbName,
    '-f',
    file,
  ]
  try {
    return await execFileP('psql', args, {
      env: {...process.env, PGOPTIONS: pgoptions.join(' '), PGCONNECT_TIMEOUT: '10'},
      maxBuffer: 64 * 1024 * 1024,
    })
  } catch (error) {
    const e = error as {stderr?: string; message: string}
    throw new Error(`psql -f ${path.basename(file)} failed: ${e.stderr?.trim() || e.message}`)
  }
}

/**
 * Runs the guide's own SQL (test/fixtures/guide_014_by_hand.sql, verbatim) with psql, as an
 * operator following the guide would have: materialized view, refresh function and triggers,
 * the buggy D1 check, a validated FK and plain indexes.
 * With onErrorStop false it continues past errors, like `psql < file` (bash nself, the guide).
 */
export async function applyGuideByHand(
  dbName: string,
  schema: string = 'public',
  opts: {onErrorStop?: boolean} = {},
): Promise<{stdout: string; stderr: string}> {
  return applyFileWithPsql(dbName, GUIDE_BY_HAND_FILE, {schema, onErrorStop: opts.onErrorStop})
}

// Statements that must run alone outside a transaction. Matched at the start of a line, the
// migration files put them last.
const TAIL_START = /^[ \t]*(CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY\b|ALTER\s+TABLE\s+[^;]*?\bVALIDATE\s+CONSTRAINT\b)/im

/**
 * Splits a migration file like the engine does: everything before the first
 * CONCURRENTLY / VALIDATE CONSTRAINT statement is the transactional part, the rest are tail
 * statements, each run alone.
 */
export function splitMigration(text: string): {transactional: string; tail: string[]} {
  const m = TAIL_START.exec(text)
  if (!m) return {transactional: text, tail: []}
  const transactional = text.slice(0, m.index)
  const tail = text
    .slice(m.index)
    .split(/;[ \t]*(?:\r?\n|$)/)
    .map((s) =>
      s
        .split('\n')
        .filter((l) => !/^\s*--/.test(l))
        .join('\n')
        .trim(),
    )
    .filter((s) => s.length > 0)
  return {transactional, tail}
}

/**
 * Applies a migration file the way the engine will: search_path set to the schema and
 * nself_e2ee.applied_versions published, the transactional part in ONE transaction, then each
 * tail statement alone in autocommit.
 */
export async function applyFileAsEngine(dbName: string, file: string, opts: {schema?: string; appliedVersions?: string} = {}): Promise<void> {
  const reference = opts.layout === 'reference'
  const schema = reference ? 'nchat' : (opts.schema ?? 'public')
  ident(schema)
  const {transactional, tail} = splitMigration(await readFile(file, 'utf8'))
  const sql = connect(dbName, {schema})
  try {
    await sql.begin(async (tx) => {
      await tx.unsafe(`SET LOCAL search_path TO ${ident(schema)}`)
      await tx`SELECT set_config('nself_e2ee.applied_versions', ${opts.appliedVersions ?? ''}, true)`
      await tx.unsafe(transactional)
    })
    for (const statement of tail) await sql.unsafe(statement)
  } finally {
    await sql.end()
  }
}

/**
 * `pg_dump --schema-only --no-owner` of a database, without comments, SET lines,
 * set_config calls, \restrict lines and blank lines, so two dumps compare.
 */
export async function schemaDump(dbName: string): Promise<string> {
  const {stdout} = await execFileP('pg_dump', ['--schema-only', '--no-owner', '-h', ADMIN.host, '-p', String(ADMIN.port), '-U', ADMIN.user, dbName], {
    maxBuffer: 64 * 1024 * 1024,
  })
  return stdout
    .split('\n')
    .filter((l) => !/^--/.test(l) && !/^SET /.test(l) && !/^SELECT pg_catalog\.set_config/.test(l) && !/^\\(un)?restrict\b/.test(l) && l.trim() !== '')
    .join('\n')
}

async function findSchema(sql: postgres.Sql): Promise<string> {
  const rows = await sql<{nspname: string}[]>`
    SELECT n.nspname
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relname = 'nchat_users' AND c.relkind = 'r'
     ORDER BY n.nspname = 'public'
     LIMIT 1`
  if (rows.length === 0) throw new Error('nchat_users not found')
  return rows[0].nspname
}

/**
 * Digest of the rows of each table: `<row count>:<md5 of the rows as text, sorted>`, leaving out
 * the columns the migrations add (MIGRATION_ADDED_COLUMNS). The schema is where nchat_users lives
 * unless given.
 */
export async function dataDigest(dbName: string, tables: string[], opts: {schema?: string} = {}): Promise<Record<string, string>> {
  const sql = connect(dbName)
  try {
    const schema = opts.schema ?? (await findSchema(sql))
    const excluded = Object.values(MIGRATION_ADDED_COLUMNS).flat()
    const out: Record<string, string> = {}
    for (const table of tables) {
      const cols = await sql<{column_name: string}[]>`
        SELECT column_name FROM information_schema.columns
         WHERE table_schema = ${schema} AND table_name = ${table}
           AND NOT (column_name = ANY(${excluded}))
         ORDER BY ordinal_position`
      if (cols.length === 0) throw new Error(`table ${schema}.${table} not found`)
      const list = cols.map((c) => `"${c.column_name}"`).join(', ')
      const [row] = await sql.unsafe<{n: string; digest: string}[]>(
        `SELECT count(*)::text AS n,
                md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text COLLATE "C"), '')) AS digest
           FROM (SELECT ${list} FROM ${ident(schema)}.${ident(table)}) t`,
      )
      out[table] = `${row.n}:${row.digest}`
    }
    return out
  } finally {
    await sql.end()
  }
}
