import type {Querier, Sql} from '../connection/connect.js'

/** Transactions that leave nothing behind: rolled back whatever happens, with savepoints to go on after a failure. */

const ROLLBACK = Symbol('verify-rollback')

export type Tx = Querier

/** Run `fn` in a transaction (or savepoint) that is rolled back whatever happens. */
export async function rolledBack<T>(sql: Querier, fn: (tx: Tx) => Promise<T>): Promise<T> {
  let result: T | undefined
  const body = async (tx: Tx) => {
    result = await fn(tx)
    throw ROLLBACK
  }
  try {
    if ('savepoint' in sql && typeof sql.savepoint === 'function') {
      await sql.savepoint(body)
    } else if ('release' in sql && typeof (sql as {release?: unknown}).release === 'function') {
      // A reserved connection has no begin(): drive the transaction by hand.
      await sql.unsafe('begin')
      try {
        await body(sql)
      } finally {
        await sql.unsafe('rollback')
      }
    } else {
      await (sql as Sql).begin(body)
    }
  } catch (error) {
    if (error !== ROLLBACK) throw error
  }
  return result as T
}

/** A savepoint inside `tx`, rolled back when `fn` fails, so the transaction can go on. */
export async function attempt<T>(tx: Tx, fn: (q: Tx) => Promise<T>): Promise<{ok: true; value: T} | {ok: false; error: unknown}> {
  if ('savepoint' in tx && typeof tx.savepoint === 'function') {
    try {
      return {ok: true, value: (await tx.savepoint(fn)) as T}
    } catch (error) {
      return {error, ok: false}
    }
  }
  await tx.unsafe('savepoint nself_verify_attempt')
  try {
    const value = await fn(tx)
    await tx.unsafe('release savepoint nself_verify_attempt')
    return {ok: true, value}
  } catch (error) {
    await tx.unsafe('rollback to savepoint nself_verify_attempt')
    return {error, ok: false}
  }
}

export async function limits(tx: Tx): Promise<void> {
  await tx.unsafe("set local statement_timeout = '30s'")
  await tx.unsafe("set local lock_timeout = '5s'")
  await tx.unsafe("set local idle_in_transaction_session_timeout = '60s'")
}
