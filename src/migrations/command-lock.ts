import {createHash} from 'node:crypto'
import {setTimeout as sleep} from 'node:timers/promises'

import {CancelledError, toUserError, UserError} from '../errors.js'
import {APP_NAME, connect, type Querier, type Sql} from '../connection/connect.js'
import type {Target} from '../connection/target.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.migrations.command-lock')

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
  throw new UserError(messages.getMessage('error.NoMaintenanceDb', [target.conn.host, target.conn.port, target.conn.database, cause]), {
    cause: last,
    hint: messages.getMessage('error.NoMaintenanceDb.hint'),
  })
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
  if (!h) return messages.getMessage('info.HolderUnknown')
  const since = h.since.toISOString().slice(0, 19).replace('T', ' ')
  return h.command
    ? messages.getMessage('info.HolderCommand', [h.command, h.pid, since])
    : messages.getMessage('info.HolderSession', [h.application || messages.getMessage('info.UnnamedSession'), h.pid, since])
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
        throw new UserError(messages.getMessage('error.CommandLockWait', [describeHolder(holder), database, Math.round(options.waitMs / 1000)]), {
          hint: messages.getMessage('error.CommandLockWait.hint'),
        })
      }
      if (!told) {
        options.log?.(messages.getMessage('info.WaitingForCommand', [describeHolder(holder), database]))
        told = true
      }
      if (options.signal?.aborted) throw new CancelledError(messages.getMessage('info.CancelledWaitingForCommand'))
      await sleep(Math.min(500, Math.max(50, options.waitMs / 20)))
    }
    held = true
    const rows = await conn<{oid: number}[]>`select oid::int8 as oid from pg_database where datname = ${database}`
    if (rows.length === 0) {
      throw new UserError(messages.getMessage('error.NoDatabase', [database, target.conn.host, target.conn.port]), {
        hint: messages.getMessage('error.NoDatabase.hint'),
      })
    }
    const oid = Number(rows[0].oid)
    admin = connect(target.conn, {database: maintenance, max: 2})
    const lostError = (holder?: CommandLockHolder | null) =>
      new UserError(
        holder ? messages.getMessage('error.LockLostTaken', [database, describeHolder(holder)]) : messages.getMessage('error.LockLost', [database]),
        {
          hint: messages.getMessage('error.LockLost.hint'),
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
        throw new UserError(messages.getMessage('error.LockLostRegainFailed', [database, toUserError(error).message]), {cause: error})
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
      options.log?.(messages.getMessage('info.LockRegained', [database]))
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
          throw new UserError(messages.getMessage('error.DatabaseReplaced', [database, oid, now.oid]), {
            hint: messages.getMessage('error.DatabaseReplaced.hint'),
          })
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
