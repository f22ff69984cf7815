import {randomBytes} from 'node:crypto'
import postgres from 'postgres'

import {toUserError} from '../errors.js'
import type {ConnectionInfo} from './target.js'

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

export function connect(conn: ConnectionInfo, options: ConnectOptions = {}): Sql {
  return postgres({
    connect_timeout: 10,
    connection: {application_name: options.appName ?? APP_NAME},
    database: options.database ?? conn.database,
    host: conn.host,
    // Sessions must live as long as the run: an advisory lock or SET must not vanish with a recycled socket.
    idle_timeout: 0,
    max: options.max ?? 4,
    max_lifetime: 0,
    onclose: () => options.onClose?.(),
    onnotice: (n) => options.onNotice?.(String(n.message)),
    password: conn.password,
    port: conn.port,
    prepare: false,
    user: conn.user,
  })
}

/** Connect and make sure the server answers, translating failures into one clear sentence. */
export async function connectChecked(conn: ConnectionInfo, options: ConnectOptions = {}): Promise<Sql> {
  const sql = connect(conn, options)
  try {
    await sql`select 1`
  } catch (error) {
    await sql.end({timeout: 1}).catch(() => {})
    throw toUserError(error, `database "${options.database ?? conn.database}" at ${conn.host}:${conn.port}`)
  }
  return sql
}

export function quoteIdent(name: string): string {
  return '"' + name.replaceAll('"', '""') + '"'
}

/** Anything queries can run on: the pool, a transaction, or a reserved connection. */
export type Querier = postgres.Sql | postgres.TransactionSql | postgres.ReservedSql
