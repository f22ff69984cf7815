import {createHash} from 'node:crypto'
import {setTimeout as sleep} from 'node:timers/promises'

import {CancelledError, toUserError, UserError} from '../errors.js'
import {APP_NAME, connect, type Querier, type Sql} from '../connection/connect.js'
import type {Target} from '../connection/target.js'

/**
 * One command at a time per database, across every command that changes it (migrate, dryrun, rollback with
 * either strategy). The lock is a session advisory lock in the server's maintenance database, never in the
 * target itself: a rollback's swap replaces the target database, and a lock inside it would vanish with it.
 * It is held on a dedicated connection for the whole command; losing that connection loses the lock, and the
 * command then refuses to write anything more (`assertHeld`).
 *
 * Advisory locks are per database, so every command must take it in the same maintenance database: the first
 * of `postgres`, `template1` (never the target) that accepts the connection.
 */

/** 'nslc': the class of the cross-command lock (the in-database run lock of the runner uses 'nslf'). */
export const COMMAND_LOCK_CLASS = 0x6e_73_6c_63

export type CommandName = 'migrate' | 'dryrun' | 'rollback' | 'status' | 'verify' | 'maintain'

/** The lock key of a database: 31 bits of sha256(name), so it reads back the same from pg_locks.objid. */
export function commandLockKey(database: string): number {
  return createHash('sha256').update(database).digest().readUInt32BE(0) & 0x7f_ff_ff_ff
}

export function maintenanceDatabases(target: Target): string[] {
  return ['postgres', 'template1'].filter((d) => d !== target.conn.database)
}

/** A pool on the maintenance database (for the lock, CREATE/DROP/RENAME DATABASE and the state of the target). */
export async function connectMaintenance(
  target: Target,
  options: {max?: number; appName?: string; onClose?: () => void} = {},
): Promise<{sql: Sql; database: string}> {
  let last: unknown
  for (const database of maintenanceDatabases(target)) {
    const sql = connect(target.conn, {appName: options.appName, database, max: options.max ?? 1, onClose: options.onClose})
    try {
      await sql`select 1`
      return {database, sql}
    } catch (error) {
      last = error
      await sql.end({timeout: 1}).catch(() => {})
    }
  }
  // The server itself is out of reach (refused, unknown host, timeout, login refused): say that, as any command would.
  const code = (last as {code?: string})?.code
  if (!['3D000', '42501', '55000'].includes(code ?? '')) throw toUserError(last)
  const cause = toUserError(last).message.replace(/\.$/, '')
  throw new UserError(
    `Cannot connect to a maintenance database (postgres or template1) on ${target.conn.host}:${target.conn.port}, which holds the lock that keeps two commands from changing "${target.conn.database}" at once: ${cause}.`,
    {
      cause: last,
      hint: 'Grant the user CONNECT on the database "postgres".',
    },
  )
}

export interface CommandLockHolder {
  pid: number
  application: string
  /** The command named in the holder's application_name (`nself-e2ee-<run> <command>`). */
  command: string | null
  /** The holder's run id (from its application_name). */
  run: string | null
  since: Date
}

/** Who holds the command lock of `database` (null: nobody). `admin` must be on the maintenance database. */
export async function commandLockHolder(admin: Querier, database: string): Promise<CommandLockHolder | null> {
  const rows = await admin<{pid: number; application: string; since: Date}[]>`
    select a.pid, coalesce(a.application_name, '') as application, coalesce(a.backend_start, now()) as since
    from pg_locks l join pg_stat_activity a on a.pid = l.pid
    where l.locktype = 'advisory' and l.granted and l.database = (select oid from pg_database where datname = current_database())
      and l.classid = ${COMMAND_LOCK_CLASS} and l.objid = ${commandLockKey(database)} and l.objsubid = 2
    limit 1`
  if (rows.length === 0) return null
  const r = rows[0]
  const m = /^nself-e2ee-([0-9a-f]+) (\w+)/.exec(r.application)
  return {application: r.application, command: m?.[2] ?? null, pid: r.pid, run: m?.[1] ?? null, since: new Date(r.since)}
}

export function describeHolder(h: CommandLockHolder | null): string {
  if (!h) return 'another session'
  const what = h.command ? `nself db e2ee ${h.command}` : `session "${h.application || 'unnamed'}"`
  return `${what}, pid ${h.pid}, running since ${h.since.toISOString().slice(0, 19).replace('T', ' ')} UTC`
}

export interface CommandLock {
  /** The target database this lock is for. */
  database: string
  /** pg_database.oid of the target when the lock was taken: a different one later means it was replaced. */
  oid: number
  /** The maintenance database the lock lives in. */
  maintenance: string
  /** A pool on the maintenance database for CREATE/DROP/RENAME DATABASE (not the lock's own connection). */
  admin: Sql
  /** Throws when the lock's connection was lost (and with it the lock). */
  assertHeld(): void
  /**
   * Throws unless `q` is connected to the very database this command started on (same name, same OID) and the lock
   * is held; a lock lost with its connection is taken again first when no other command took it meanwhile.
   */
  assertSameDatabase(q: Querier): Promise<void>
  release(): Promise<void>
}

export interface AcquireOptions {
  command: CommandName
  /** How long to wait for another command (ms). */
  waitMs: number
  log?: (line: string) => void
  /** The run's signal: waiting for another command stops when it is aborted (Ctrl+C). */
  signal?: AbortSignal
}

/**
 * Take the command lock of the target database, waiting up to `waitMs` while another command holds it (saying
 * which one), then refusing with one sentence. `null` instead of waiting/refusing when `tryOnly` is set.
 */
export async function acquireCommandLock(target: Target, options: AcquireOptions & {tryOnly: true}): Promise<CommandLock | null>
export async function acquireCommandLock(target: Target, options: AcquireOptions & {tryOnly?: false}): Promise<CommandLock>
export async function acquireCommandLock(target: Target, options: AcquireOptions & {tryOnly?: boolean}): Promise<CommandLock | null> {
  const database = target.conn.database
  const key = commandLockKey(database)
  const appName = `${APP_NAME} ${options.command}`
  let held = false
  let lost = false
  // Each lock connection gets a generation: only the current one's closing means the lock was lost.
  let generation = 0
  const openLockConnection = async () => {
    const mine = ++generation
    return connectMaintenance(target, {
      appName,
      max: 1,
      onClose: () => {
        if (held && mine === generation) lost = true
      },
    })
  }
  const opened = await openLockConnection()
  const maintenance = opened.database
  let conn = opened.sql
  let admin: Sql | undefined
  try {
    const started = Date.now()
    let told = false
    for (;;) {
      const [{ok}] = await conn<{ok: boolean}[]>`select pg_try_advisory_lock(${COMMAND_LOCK_CLASS}, ${key}) as ok`
      if (ok) break
      if (options.tryOnly) {
        await conn.end({timeout: 2}).catch(() => {})
        return null
      }
      const holder = await commandLockHolder(conn, database)
      if (Date.now() - started >= options.waitMs) {
        throw new UserError(
          `Another command (${describeHolder(holder)}) is changing the database "${database}"; waited ${Math.round(options.waitMs / 1000)} s for it to finish.`,
          {
            hint: 'Let it finish and run again, or raise --lock-wait.',
          },
        )
      }
      if (!told) {
        options.log?.(`Waiting for another command (${describeHolder(holder)}) to finish with "${database}"…`)
        told = true
      }
      if (options.signal?.aborted) throw new CancelledError('waiting for the other command')
      await sleep(Math.min(500, Math.max(50, options.waitMs / 20)))
    }
    held = true
    const rows = await conn<{oid: number}[]>`select oid::int8 as oid from pg_database where datname = ${database}`
    if (rows.length === 0) {
      throw new UserError(`The database "${database}" does not exist on ${target.conn.host}:${target.conn.port}.`, {hint: 'Check --database or POSTGRES_DB.'})
    }
    const oid = Number(rows[0].oid)
    admin = connect(target.conn, {database: maintenance, max: 2})
    const lostError = (holder?: CommandLockHolder | null) =>
      new UserError(
        `The connection holding the lock on "${database}" was lost${holder ? ` and ${describeHolder(holder)} took it` : ', so another command could start'}; stopping before writing anything more.`,
        {
          hint: 'Check the server, then run nself db e2ee status.',
        },
      )
    const assertHeld = () => {
      if (lost) throw lostError()
    }
    // After a lost connection (a server restart, a network cut) the lock is taken again when nobody else took it
    // meanwhile; assertSameDatabase then proves the database is still the one this command started on.
    const regain = async () => {
      if (!lost) return
      const fresh = await openLockConnection().catch((error: unknown) => {
        throw new UserError(`${lostError().message.replace(/\.$/, '')}; taking it again failed: ${toUserError(error).message}`, {cause: error})
      })
      const [{ok}] = await fresh.sql<{ok: boolean}[]>`select pg_try_advisory_lock(${COMMAND_LOCK_CLASS}, ${key}) as ok`
      if (!ok) {
        const holder = await commandLockHolder(fresh.sql, database).catch(() => null)
        await fresh.sql.end({timeout: 2}).catch(() => {})
        throw lostError(holder)
      }
      const old = conn
      conn = fresh.sql
      lost = false
      options.log?.(`Took the lock on "${database}" again after its connection was lost.`)
      await old.end({timeout: 1}).catch(() => {})
    }
    const lockAdmin = admin
    return {
      admin: lockAdmin,
      assertHeld,
      async assertSameDatabase(q: Querier) {
        await regain()
        const [now] = await q<
          {name: string; oid: string}[]
        >`select current_database() as name, oid::int8::text as oid from pg_database where datname = current_database()`
        if (now.name !== database || Number(now.oid) !== oid) {
          throw new UserError(
            `The database "${database}" was replaced while this command was working on it (it is not the database the command started on: OID ${oid} then, ${now.oid} now); nothing more was written.`,
            {
              hint: 'Something renamed or restored it meanwhile; run nself db e2ee status to see where it stands.',
            },
          )
        }
      },
      database,
      maintenance,
      oid,
      async release() {
        held = false
        await lockAdmin.end({timeout: 2}).catch(() => {})
        // Ending the session releases a session advisory lock: no query on a connection that may be dead.
        await conn.end({timeout: 2}).catch(() => {})
      },
    }
  } catch (error) {
    held = false
    await admin?.end({timeout: 2}).catch(() => {})
    await conn.end({timeout: 2}).catch(() => {})
    throw error
  }
}
