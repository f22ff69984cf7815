// Fault injection for the CLI: run `node bin/run.js db e2ee …` against a private cluster, hold it at a named
// step by observable state (its log lines, pg_stat_activity, pg_stat_progress_create_index, the ledger), deliver
// a fault there, then inspect what is left and whether a plain rerun finishes.
//
// Nothing here waits a fixed time: every wait polls a condition, bounded by a generous deadline that only
// turns a hang into a failure naming what was awaited.

import {type ChildProcess, spawn} from 'node:child_process'
import {readdirSync, readFileSync} from 'node:fs'
import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import type postgres from 'postgres'

import expected from '../../src/migrations/expected-schema.json'
import {SIDECAR_DIR} from '../../src/archive/manifest.js'
import {BIN} from './cli.js'
import type {PrivateCluster} from './cluster.js'
import {MIGRATION_ADDED_COLUMNS, V030_TABLES} from './fixture.js'

export type Fault = 'kill -9' | 'Ctrl+C' | 'SIGTERM' | 'sessions ended' | 'server restart'
export const FAULTS: Fault[] = ['kill -9', 'Ctrl+C', 'SIGTERM', 'sessions ended', 'server restart']

export interface Finished {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** stdout + stderr as they were when the fault was delivered. */
  atFault: string
}

/** One CLI process; output is collected as it comes so a test can wait for a line. */
export class CliRun {
  readonly child: ChildProcess
  stdout = ''
  stderr = ''
  atFault = ''
  exited = false
  readonly done: Promise<Finished>

  constructor(args: string[], env: Record<string, string | undefined>, timeoutMs = 900_000) {
    this.child = spawn(process.execPath, [BIN, 'db', 'e2ee', ...args], {
      // Every progress line (the scenarios wait for particular ones), as CI logs would hold them with interval 0.
      env: {...process.env, CI: 'true', FORCE_COLOR: '0', NO_COLOR: '1', NSELF_E2EE_PROGRESS_INTERVAL: '0', ...env},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.child.stdout!.on('data', (d) => {
      this.stdout += d
    })
    this.child.stderr!.on('data', (d) => {
      this.stderr += d
    })
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs)
    this.done = new Promise((resolve, reject) => {
      this.child.on('error', reject)
      this.child.on('close', (code, signal) => {
        clearTimeout(timer)
        this.exited = true
        resolve({atFault: this.atFault, code, signal, stderr: this.stderr, stdout: this.stdout})
      })
    })
  }

  get output(): string {
    return this.stdout + this.stderr
  }

  signal(sig: NodeJS.Signals): void {
    this.atFault = this.output
    this.child.kill(sig)
  }
}

/**
 * Poll `cond` until it holds. Fails (naming `what` and the CLI's output) if `run` exits first or the deadline
 * passes; the deadline is a hang detector, not a timing assumption.
 */
export async function until(what: string, cond: () => Promise<boolean> | boolean, opts: {run?: CliRun; timeoutMs?: number} = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 600_000)
  for (;;) {
    if (await cond()) return
    if (opts.run?.exited) throw new Error(`the CLI exited before ${what}:\n${opts.run.output.slice(-3000)}`)
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${opts.run ? `:\n${opts.run.output.slice(-3000)}` : ''}`)
    await sleep(15)
  }
}

/** The tool's sessions on the server (its pool, pg_dump/pg_restore children): application_name nself-e2ee-*. */
export async function toolSessions(
  cluster: PrivateCluster,
): Promise<Array<{pid: number; datname: string | null; state: string | null; wait: string | null; query: string}>> {
  return cluster.with(
    'postgres',
    (sql) => sql`
    select pid, datname, state, wait_event_type as wait, coalesce(query, '') as query from pg_stat_activity
    where application_name like 'nself-e2ee-%' and backend_type = 'client backend' and pid <> pg_backend_pid()`,
  )
}

/** The tool's sessions waiting for a heavyweight lock, each with the start of the query that waits. */
async function sessionsWaitingOnLock(cluster: PrivateCluster): Promise<Array<{pid: number; since: string}>> {
  return cluster.with(
    'postgres',
    (sql) => sql<{pid: number; since: string}[]>`
    select pid, query_start::text as since from pg_stat_activity
    where application_name like 'nself-e2ee-%' and backend_type = 'client backend' and wait_event_type = 'Lock' and pid <> pg_backend_pid()`,
  )
}

/** True when one of the tool's sessions waits for a heavyweight lock, on a query matching `pattern` (if given). */
export async function toolWaitsOnLock(cluster: PrivateCluster, pattern?: RegExp): Promise<boolean> {
  const sessions = await toolSessions(cluster)
  return sessions.some((s) => s.wait === 'Lock' && (!pattern || pattern.test(s.query)))
}

/** A CONCURRENTLY build of `index` waits for old snapshots to end (the last phase of the build). */
export async function indexBuildWaits(cluster: PrivateCluster, db: string, index: string): Promise<boolean> {
  const rows = await cluster.with('postgres', (sql) =>
    sql`
    select p.phase from pg_stat_progress_create_index p join pg_class c on c.oid = p.index_relid
    where p.datname = ${db} and c.relname = ${index}`.catch(() => [] as Array<{phase: string}>),
  )
  // pg_class of another database is not visible from "postgres": look from the database itself instead.
  if (rows.length > 0) return rows.some((r) => r.phase.startsWith('waiting for old snapshots'))
  const own = await cluster.with(
    db,
    (sql) => sql<{phase: string}[]>`
    select p.phase from pg_stat_progress_create_index p join pg_class c on c.oid = p.index_relid
    where c.relname = ${index}`,
  )
  return own.some((r) => r.phase.startsWith('waiting for old snapshots'))
}

/**
 * A session the test holds open on the cluster: a lock or a snapshot, released on demand (also after a restart
 * or after its session was ended). A one-connection pool, not `sql.reserve()`: a reserved connection whose
 * backend died can hang or crash postgres.js 3.4.9 when it is queried again (porsager/postgres 1199, 1208).
 */
export class Hold {
  private constructor(
    private readonly sql: postgres.Sql,
    readonly acquired: Promise<void>,
  ) {}

  /** `LOCK TABLE table IN mode MODE` in an open transaction; `acquired` resolves when the lock is granted (it may queue). */
  static async lock(cluster: PrivateCluster, db: string, table: string, mode: string, wait = false): Promise<Hold> {
    const sql = cluster.connect(db, {keepIdle: true})
    await sql.unsafe('begin')
    const acquired = sql.unsafe(`lock table public."${table}" in ${mode} mode`).then(() => {})
    acquired.catch(() => {})
    if (wait) await acquired
    return new Hold(sql, acquired)
  }

  /** A REPEATABLE READ transaction that has taken its snapshot and holds no table lock (stalls CONCURRENTLY builds). */
  static async snapshot(cluster: PrivateCluster, db: string): Promise<Hold> {
    const sql = cluster.connect(db, {keepIdle: true})
    await sql.unsafe('begin isolation level repeatable read')
    await sql.unsafe('select 1')
    return new Hold(sql, Promise.resolve())
  }

  /** Any SQL in an open transaction on the `postgres` database. */
  static async statement(cluster: PrivateCluster, statement: string): Promise<Hold> {
    const sql = cluster.connect('postgres', {keepIdle: true})
    await sql.unsafe('begin')
    const acquired = sql.unsafe(statement).then(() => {})
    acquired.catch(() => {})
    return new Hold(sql, acquired)
  }

  async release(): Promise<void> {
    // Ending the session rolls its transaction back; nothing is sent on a connection that may be dead.
    await this.sql.end({timeout: 0}).catch(() => {})
  }
}

/** Deliver `fault` to the run (or to its server). */
export async function deliver(fault: Fault, run: CliRun, cluster: PrivateCluster): Promise<void> {
  switch (fault) {
    case 'kill -9':
      run.signal('SIGKILL')
      return
    case 'Ctrl+C':
    case 'SIGTERM': {
      const waiting = await sessionsWaitingOnLock(cluster)
      run.signal(fault === 'Ctrl+C' ? 'SIGINT' : 'SIGTERM')
      // The test's holds are released after this: first let the CLI act on the signal, or a query it should
      // have cancelled would get its lock and finish the step instead (and the row would test the next one).
      await until(
        `the CLI to act on ${fault} (stop waiting for the locks it waited for, or exit)`,
        async () => {
          if (run.exited) return true
          const now = await sessionsWaitingOnLock(cluster)
          return !now.some((s) => waiting.some((w) => w.pid === s.pid && w.since === s.since))
        },
        {timeoutMs: 120_000},
      )
      return
    }
    case 'sessions ended': {
      run.atFault = run.output
      const ended = await cluster.with(
        'postgres',
        (sql) => sql<{pid: number}[]>`
        select pid from pg_stat_activity where application_name like 'nself-e2ee-%' and pid <> pg_backend_pid() and pg_terminate_backend(pid)`,
      )
      if (ended.length === 0) throw new Error('no session of the tool was there to end')
      return
    }
    case 'server restart':
      run.atFault = run.output
      await cluster.restart()
      return
  }
}

// ------------------------------------------------------------------------------------------------------------
// What is left
// ------------------------------------------------------------------------------------------------------------

const NEW_OBJECTS = expected.objects.filter((o) => ['table', 'view', 'index', 'sequence'].includes(o.kind)).map((o) => o.name)
const NEW_FUNCTIONS = expected.objects.filter((o) => o.kind === 'function').map((o) => o.name)
const ADDED_COLUMNS = Object.entries(MIGRATION_ADDED_COLUMNS).flatMap(([t, cs]) => cs.map((c) => `${t}.${c}`))

export interface Leftovers {
  /** Versions above 12 in schema_migrations (null when the database cannot be read). */
  ledger: number[] | null
  /** Objects 013–016 create (tables, views, indexes, sequences, functions, added columns) that exist. */
  objects: string[]
  invalidIndexes: string[]
  notValidConstraints: string[]
  /** Other databases whose name starts with the target's (dry-run clones, restore copies, kept copies). */
  databases: string[]
  /** `*.partial` files in the backup folder and its sidecar folder (where dumps are written until complete). */
  partialFiles: string[]
  /** Sessions of the tool still on the server. */
  sessions: number
  /** datallowconn of the target (null when it does not exist). */
  allowConn: boolean | null
}

export async function whatIsLeft(cluster: PrivateCluster, db: string, backupDir?: string): Promise<Leftovers> {
  const admin = await cluster.with('postgres', async (sql) => {
    const [row] = await sql<{allow: boolean}[]>`select datallowconn as allow from pg_database where datname = ${db}`
    const dbs = await sql<{name: string}[]>`select datname as name from pg_database where datname like ${`${db.replaceAll('_', '\\_')}\\_%`} order by 1`
    return {allowConn: row ? row.allow : null, databases: dbs.map((d) => d.name)}
  })
  const partialFiles: string[] = []
  if (backupDir) {
    for (const folder of [backupDir, path.join(backupDir, SIDECAR_DIR)]) {
      const names = (() => {
        try {
          return readdirSync(folder)
        } catch {
          return []
        }
      })()
      partialFiles.push(...names.filter((f) => f.endsWith('.partial')).map((f) => path.join(folder, f)))
    }
  }
  // The tool's sessions end a moment after the process does (the server notices the closed socket).
  let sessions = (await toolSessions(cluster)).length
  for (let i = 0; i < 40 && sessions > 0; i++) {
    await sleep(50)
    sessions = (await toolSessions(cluster)).length
  }
  const out: Leftovers = {...admin, invalidIndexes: [], ledger: null, notValidConstraints: [], objects: [], partialFiles, sessions}
  if (admin.allowConn !== true) return out
  await cluster.with(db, async (sql) => {
    const ledger = await sql<{v: number}[]>`select version::int as v from public.schema_migrations where version::int > 12 order by 1`
    out.ledger = ledger.map((r) => r.v)
    const rels = await sql<{name: string}[]>`
      select c.relname as name from pg_class c where c.relnamespace = 'public'::regnamespace and c.relname = any(${NEW_OBJECTS})
      union all select p.proname from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname = any(${NEW_FUNCTIONS})
      union all select a.attrelid::regclass::text || '.' || a.attname from pg_attribute a
        where a.attrelid in ('public.nchat_messages'::regclass, 'public.nchat_channels'::regclass) and not a.attisdropped
          and a.attrelid::regclass::text || '.' || a.attname = any(${ADDED_COLUMNS})`
    out.objects = rels.map((r) => r.name).sort()
    out.invalidIndexes = (
      await sql<{name: string}[]>`
      select c.relname as name from pg_index i join pg_class c on c.oid = i.indexrelid where not i.indisvalid`
    ).map((r) => r.name)
    out.notValidConstraints = (await sql<{name: string}[]>`select conname as name from pg_constraint where not convalidated`).map((r) => r.name)
  })
  return out
}

/** The state the upgrade had not started: ledger at 12, none of 013–016's objects, nothing invalid. */
export function untouched(l: Leftovers): boolean {
  return l.allowConn === true && l.ledger?.length === 0 && l.objects.length === 0 && l.invalidIndexes.length === 0 && l.notValidConstraints.length === 0
}

/** Nothing of the tool left beside the target: no copies, no partial files, no sessions, connections allowed. */
export function noDebris(l: Leftovers): boolean {
  return l.allowConn === true && l.databases.length === 0 && l.partialFiles.length === 0 && l.sessions === 0
}

/** The last "Error: …" paragraph the CLI printed (its one sentence and the hint). */
export function errorMessage(stderr: string): string {
  const i = stderr.lastIndexOf('Error: ')
  return i === -1 ? '' : stderr.slice(i).trim()
}

/** One sentence: no stack trace, no raw JavaScript error name. */
export function isOneTrueSentence(message: string): boolean {
  const first = message.split('\n')[0]
  return (
    /^Error: \S/.test(first)
    && !/\n\s+at .+:\d+:\d+/.test(message)
    && !/\b(TypeError|ReferenceError|RangeError|SyntaxError|Unhandled|uncaught)\b/i.test(message)
  )
}

/** Files in the backup folder that are finished dumps. */
export function backups(dir: string): string[] {
  try {
    return readdirSync(dir)
      .filter((f) => f.endsWith('.dump'))
      .map((f) => path.join(dir, f))
  } catch {
    return []
  }
}

export function readText(file: string): string {
  return readFileSync(file, 'utf8')
}

/**
 * `<rows>:<md5 of the rows as text, sorted>` of each v0.3.0 table, leaving out the columns the migrations add:
 * equal digests mean no committed row was lost or changed.
 */
export async function v030Digest(cluster: PrivateCluster, db: string): Promise<Record<string, string>> {
  const excluded = Object.values(MIGRATION_ADDED_COLUMNS).flat()
  return cluster.with(db, async (sql) => {
    const out: Record<string, string> = {}
    for (const table of V030_TABLES) {
      const cols = await sql<{c: string}[]>`
        select column_name as c from information_schema.columns
        where table_schema = 'public' and table_name = ${table} and not (column_name = any(${excluded})) order by ordinal_position`
      const list = cols.map((c) => `"${c.c}"`).join(', ')
      const [row] = await sql.unsafe<{n: string; d: string}[]>(
        `select count(*)::text as n, md5(coalesce(string_agg(t::text, E'\\n' order by t::text collate "C"), '')) as d from (select ${list} from public."${table}") t`,
      )
      out[table] = `${row.n}:${row.d}`
    }
    return out
  })
}
