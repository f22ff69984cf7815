import {randomBytes} from 'node:crypto'
import postgres from 'postgres'

import {toUserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import type {ConnectionInfo} from './target.js'

const messages = loadMessages('lib.connection.connect')

export type Sql = postgres.Sql

/** Every server session this process opens carries this name, so Ctrl+C can end the ones `docker exec` left. */
export const RUN_ID = randomBytes(4).toString('hex')
export const APP_NAME = `nself-e2ee-${RUN_ID}`

export interface ConnectOptions {
  database?: string
  max?: number
  /** Where server NOTICEs go; the default drops them (postgres.js would print them to stdout). */
  onNotice?: (message: string) => void
  /** application_name of these sessions (default APP_NAME; keep the APP_NAME prefix so Ctrl+C and sweeps know them). */
  appName?: string
  /** Called whenever one of the pool's connections closes (for a session that must not be lost unnoticed). */
  onClose?: () => void
}

/** How each pool was opened, so a fresh one to the same place can be made after a connection was lost. */
const origins = new WeakMap<Sql, {conn: ConnectionInfo; options: ConnectOptions}>()

export function connect(conn: ConnectionInfo, options: ConnectOptions = {}): Sql {
  const sql = postgres(poolOptions(conn, options))
  origins.set(sql, {conn, options})
  return sql
}

function poolOptions(conn: ConnectionInfo, options: ConnectOptions, max?: number): postgres.Options<Record<string, postgres.PostgresType>> {
  return {
    connect_timeout: 10,
    connection: {application_name: options.appName ?? APP_NAME},
    database: options.database ?? conn.database,
    host: conn.host,
    // Sessions must live as long as the run: an advisory lock or SET must not vanish with a recycled socket.
    idle_timeout: 0,
    max: max ?? options.max ?? 4,
    max_lifetime: 0,
    onclose: () => options.onClose?.(),
    onnotice: (n) => options.onNotice?.(String(n.message)),
    password: conn.password,
    port: conn.port,
    prepare: false,
    user: conn.user,
  }
}

/** How `sql` was opened: by connect(), or (a library caller's own pool) read back from postgres.js's options. */
function originOf(sql: Sql): {conn: ConnectionInfo; options: ConnectOptions} {
  const known = origins.get(sql)
  if (known) return known
  const o = sql.options as unknown as {host: string[]; port: number[]; user: string; pass?: unknown; database: string}
  return {
    conn: {database: o.database, host: o.host[0], password: typeof o.pass === 'string' && o.pass !== '' ? o.pass : undefined, port: o.port[0], user: o.user},
    options: {},
  }
}

/**
 * End a pool after Ctrl+C: its queries may be waiting on the server (for a lock), where closing our end of the
 * socket does not reach them. Cancel them from a fresh session first, then end the pool.
 */
export async function stopPool(sql: Sql): Promise<void> {
  try {
    const admin = reopen(sql, 1)
    try {
      await admin`select pg_cancel_backend(pid) from pg_stat_activity
        where application_name = ${APP_NAME} and datname = current_database() and pid <> pg_backend_pid() and state = 'active'`
    } finally {
      await admin.end({timeout: 1})
    }
  } catch {
    // Best effort: the pool's end below still closes what it can.
  }
  await sql.end({timeout: 1}).catch(() => {})
}

/** A new pool to the same database as `sql` (for an undo that must not depend on connections that died). */
export function reopen(sql: Sql, max?: number): Sql {
  const origin = originOf(sql)
  return connect(origin.conn, {...origin.options, max: max ?? origin.options.max})
}

/**
 * One server session of its own (an advisory lock, session SETs, a CONCURRENTLY build): a one-connection pool.
 * Not `sql.reserve()`: postgres.js 3.4.9 crashes the process with an uncaught TypeError (from a setImmediate,
 * beyond any .catch) when a reserved connection whose backend died is queried again, and `release()` of such a
 * connection hands the dead socket back to the pool (porsager/postgres 1199, 1208). A pool of its own notices
 * the loss (`lost`), reconnects instead of crashing, and `close()` never sends anything on a dead socket.
 */
export interface Session {
  sql: Sql
  /** The session's connection closed (server ended it, restart, network): its state (locks, SETs) is gone. */
  readonly lost: boolean
  close(): Promise<void>
}

export async function openSession(pool: Sql): Promise<Session> {
  const origin = originOf(pool)
  let lost = false
  let opened = false
  const sql = postgres({
    ...poolOptions(origin.conn, origin.options, 1),
    onclose: () => {
      if (opened) lost = true
    },
  })
  try {
    await sql`select 1`
  } catch (error) {
    await sql.end({timeout: 0}).catch(() => {})
    throw toUserError(error, messages.getMessage('what.database', [origin.options.database ?? origin.conn.database, origin.conn.host, origin.conn.port]))
  }
  opened = true
  return {
    async close() {
      await sql.end({timeout: lost ? 0 : 2}).catch(() => {})
    },
    get lost() {
      return lost
    },
    sql,
  }
}

/**
 * `fn` on a session of its own (openSession: one server session, never written to once lost), closed when `fn`
 * ends, however it ends: the one place such a session is closed.
 */
export async function withSession<T>(pool: Sql, fn: (session: Session) => Promise<T>): Promise<T> {
  const session = await openSession(pool)
  try {
    return await fn(session)
  } finally {
    await session.close()
  }
}

/** Connect and make sure the server answers, translating failures into one clear sentence. */
export async function connectChecked(conn: ConnectionInfo, options: ConnectOptions = {}): Promise<Sql> {
  const sql = connect(conn, options)
  try {
    await sql`select 1`
  } catch (error) {
    await sql.end({timeout: 1}).catch(() => {})
    throw toUserError(error, messages.getMessage('what.database', [options.database ?? conn.database, conn.host, conn.port]))
  }
  return sql
}

/** Anything queries can run on: the pool, a transaction, or a reserved connection. */
export type Querier = postgres.Sql | postgres.TransactionSql | postgres.ReservedSql
