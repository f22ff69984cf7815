import {setTimeout as sleep} from 'node:timers/promises'

import {CancelledError, UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import {openSession, type Querier, type Sql} from '../connection/connect.js'
import {plural} from '../text.js'

const messages = loadMessages('lib.migrations.locks')

/** 'nslf' and the release: the advisory lock key every `nself db e2ee` run on a database takes. */
const LOCK_CLASS = 0x6e_73_6c_66
const LOCK_OBJ = 40

export interface LockHolder {
  pid: number
  seconds: number
  relation?: string
  query: string
  application: string
  blockedBy?: number[]
}

/**
 * One run at a time: a session advisory lock on a session of its own, released by the caller. A second run
 * waits up to `waitMs`, saying who holds it, then stops with a clear error. The release never queries a
 * session the server has ended (its lock went with it).
 */
export type RunLock = (() => Promise<void>) & {
  /** The session holding the lock was ended (server restart, pg_terminate_backend): the lock is gone. */
  lost: () => boolean
}

export async function acquireRunLock(sql: Sql, waitMs: number, log: (line: string) => void, signal?: AbortSignal): Promise<RunLock> {
  const session = await openSession(sql)
  const conn = session.sql
  const started = Date.now()
  let told = false
  try {
    await waitForRunLock()
  } catch (error) {
    await session.close()
    throw error
  }
  let released = false
  const release = async () => {
    released = true
    try {
      if (!session.lost) await conn`select pg_advisory_unlock(${LOCK_CLASS}, ${LOCK_OBJ})`
    } catch {
      // The session died while unlocking: the server released the lock with it.
    } finally {
      await session.close()
    }
  }
  return Object.assign(release, {lost: () => !released && session.lost})

  async function waitForRunLock(): Promise<void> {
    for (;;) {
      const [{ok}] = await conn<{ok: boolean}[]>`select pg_try_advisory_lock(${LOCK_CLASS}, ${LOCK_OBJ}) as ok`
      if (ok) break
      const [holder] = await conn<LockHolder[]>`
        select a.pid, coalesce(a.application_name, '') as application, extract(epoch from now() - a.backend_start)::int as seconds, '' as query
        from pg_locks l join pg_stat_activity a on a.pid = l.pid
        where l.locktype = 'advisory' and l.classid = ${LOCK_CLASS} and l.objid = ${LOCK_OBJ} and l.granted limit 1`
      const who = holder
        ? holder.application
          ? messages.getMessage('info.RunHolderApp', [holder.pid, holder.application])
          : messages.getMessage('info.RunHolder', [holder.pid])
        : messages.getMessage('info.RunHolderUnknown')
      if (Date.now() - started >= waitMs) {
        throw new UserError(messages.getMessage('error.RunLockWait', [who, Math.round(waitMs / 1000)]), {
          hint: messages.getMessage('error.RunLockWait.hint'),
        })
      }
      if (!told) {
        log(messages.getMessage('info.WaitingForRunLock', [who]))
        told = true
      }
      if (signal?.aborted) throw new CancelledError(messages.getMessage('info.CancelledWaitingForRunLock'))
      await sleep(Math.min(500, Math.max(50, waitMs / 20)))
    }
  }
}

/**
 * Sessions whose open transaction holds a lock on one of these tables and has been open for longer than
 * `olderThanMs` (the lock timeout: a busy writer's transaction, a few ms, never qualifies). Requesting a strong
 * lock while they are there would queue every later writer behind us. `blockedBy`: whom such a session itself
 * waits for, if anyone (then that one is the cause).
 */
export async function longLockHolders(sql: Querier, schema: string, tables: string[], olderThanMs: number): Promise<LockHolder[]> {
  if (tables.length === 0) return []
  return sql<LockHolder[]>`
    select distinct on (a.pid) a.pid, c.relname as relation, coalesce(a.application_name, '') as application,
      round(extract(epoch from now() - a.xact_start)::numeric, 1)::float8 as seconds, pg_blocking_pids(a.pid) as "blockedBy", left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 80) as query
    from pg_locks l
    join pg_class c on c.oid = l.relation
    join pg_namespace n on n.oid = c.relnamespace
    join pg_stat_activity a on a.pid = l.pid
    where l.granted and l.locktype = 'relation' and n.nspname = ${schema} and c.relname = any(${tables})
      and a.pid <> pg_backend_pid() and a.xact_start < now() - make_interval(secs => ${olderThanMs / 1000})
    order by a.pid, a.xact_start`
}

/** Full-jitter exponential backoff: 0..min(cap, base·2^attempt). */
export function backoffMs(attempt: number, baseMs = 100, capMs = 2000): number {
  return Math.round(Math.random() * Math.min(capMs, baseMs * 2 ** attempt))
}

export function isLockTimeout(error: unknown): boolean {
  return (error as {code?: string})?.code === '55P03'
}

/** The server chose our transaction as the victim of a lock cycle (deadlock_timeout below our lock_timeout). */
export function isDeadlock(error: unknown): boolean {
  return (error as {code?: string})?.code === '40P01'
}

/** Either way our transaction lost a wait for a lock, was rolled back, and can be tried again. */
export function isLockConflict(error: unknown): boolean {
  return isLockTimeout(error) || isDeadlock(error)
}

/** What a run's lock attempts on one migration ran into, for a true sentence when it gives up. */
export interface LockAttempts {
  timeouts: number
  deadlocks: number
  /** The statement the last one waited at. */
  at?: string
}

export function describeHolder(h: LockHolder): string {
  if (h.blockedBy?.length) {
    const waitingFor = h.blockedBy.join(', ')
    return h.query
      ? messages.getMessage('info.HolderQueryWaiting', [h.pid, h.seconds, String(h.relation), h.query, waitingFor])
      : messages.getMessage('info.HolderWaiting', [h.pid, h.seconds, String(h.relation), waitingFor])
  }
  return h.query
    ? messages.getMessage('info.HolderQuery', [h.pid, h.seconds, String(h.relation), h.query])
    : messages.getMessage('info.Holder', [h.pid, h.seconds, String(h.relation)])
}

/**
 * The error when a migration used up --max-lock-wait without getting its locks. A session is called a long
 * transaction only when it has been open for at least half of that wait (then ending it is the remedy);
 * otherwise the wait was lost to short transactions one after another (busy writers), and the sentence says so.
 */
export async function lockWaitError(
  sql: Querier,
  schema: string,
  tables: string[],
  o: {migration: string; lockTimeoutMs: number; waitedMs: number},
  seen: LockAttempts,
): Promise<UserError> {
  const holders = await longLockHolders(sql, schema, tables, o.lockTimeoutMs).catch(() => [] as LockHolder[])
  const timeouts = plural(seen.timeouts, 'lock timeout')
  const deadlocks = plural(seen.deadlocks, 'deadlock')
  const lost =
    seen.timeouts > 0
      ? seen.deadlocks > 0
        ? messages.getMessage('info.LostTimeoutsAndDeadlocks', [timeouts, o.lockTimeoutMs, deadlocks])
        : messages.getMessage('info.LostTimeouts', [timeouts, o.lockTimeoutMs])
      : seen.deadlocks > 0
        ? deadlocks
        : ''
  const within = Math.round(o.waitedMs / 1000)
  const at = String(seen.at)
  const long = holders.find((h) => h.seconds * 1000 >= o.waitedMs / 2)
  if (long) {
    const holder = describeHolder(long)
    return new UserError(
      lost
        ? messages.getMessage('error.LockWait.LongAfterLost', [o.migration, within, lost, at, holder])
        : messages.getMessage('error.LockWait.Long', [o.migration, within, holder]),
      {hint: messages.getMessage('error.LockWait.Long.hint', [long.pid])},
    )
  }
  const latest = holders[0] ? describeHolder(holders[0]) : undefined
  let message: string
  if (latest === undefined) {
    message = lost
      ? messages.getMessage('error.LockWait.BusyNoneSeenAfterLost', [o.migration, within, lost, at, o.lockTimeoutMs])
      : messages.getMessage('error.LockWait.BusyNoneSeen', [o.migration, within, o.lockTimeoutMs])
  } else {
    message = lost
      ? messages.getMessage('error.LockWait.BusyAfterLost', [o.migration, within, lost, at, latest])
      : messages.getMessage('error.LockWait.Busy', [o.migration, within, latest])
  }
  return new UserError(message, {hint: messages.getMessage('error.LockWait.Busy.hint', [o.lockTimeoutMs])})
}
