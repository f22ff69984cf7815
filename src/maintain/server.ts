import {UserError} from '../errors.js'
import {readLedgerVersion} from '../migrations/ledger.js'
import {connect, connectChecked, type Sql} from '../connection/connect.js'
import type {Target} from '../connection/target.js'
import type {DatabaseState} from './backups.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.maintain.server')

/** A connection to a maintenance database (postgres, else template1), for listing and dropping other databases. */
export async function connectAdmin(target: Target): Promise<Sql> {
  let last: unknown
  for (const database of ['postgres', 'template1']) {
    if (database === target.conn.database) continue
    try {
      return await connectChecked(target.conn, {database, max: 1})
    } catch (error) {
      last = error
    }
  }
  const reason = (last as Error)?.message ?? messages.getMessage('error.refused')
  const sentence = messages.getMessage('error.no-maintenance-db', [target.conn.host, target.conn.port, reason])
  throw new UserError(sentence.replace(/\.?$/, '.'), {cause: last})
}

/** Where each database stands (its schema_migrations), to know which backups a rollback still needs. */
export async function databaseStates(target: Target, admin: Sql | null, databases: string[]): Promise<Map<string, DatabaseState>> {
  const states = new Map<string, DatabaseState>()
  const existing = admin ? new Set((await admin<{name: string}[]>`select datname as name from pg_database`).map((r) => r.name)) : null
  for (const db of new Set(databases)) {
    if (existing && !existing.has(db)) {
      states.set(db, {state: 'missing'})
      continue
    }
    const sql = connect(target.conn, {database: db, max: 1})
    try {
      states.set(db, {state: 'at', version: await readLedgerVersion(sql, db === target.conn.database ? target.schema : undefined)})
    } catch (error) {
      states.set(db, {reason: (error as Error).message.replace(/\.$/, ''), state: 'unknown'})
    } finally {
      await sql.end({timeout: 2}).catch(() => {})
    }
  }
  return states
}
