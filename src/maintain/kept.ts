import {UserError} from '../errors.js'
import {fitIdentifier, quoteIdent} from '../pg/identifiers.js'
import type {Querier} from '../connection/connect.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.maintain.kept')

/**
 * The databases `rollback --strategy restore` keeps: the replaced live database renamed
 * `<db>_pre_rollback_<YYYYMMDD_HHMMSS>` (the db part cut so the name fits 63 bytes; steps/restore.ts).
 */

export interface KeptDatabase {
  name: string
  bytes: number
  /** From the name (local time of the rollback). */
  keptAt: string | null
  connections: number
}

const KEPT = /^(.*)_pre_rollback_(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})$/

/** Whether `name` is a copy a rollback of `database` kept (also when the database part was cut to fit). */
export function isKeptName(name: string, database: string): boolean {
  const m = KEPT.exec(name)
  if (!m) return false
  return m[1].length > 0 && fitIdentifier(database, name.slice(m[1].length)) === name
}

/** `admin` is connected to a maintenance database (never the kept ones). */
export async function keptDatabases(admin: Querier, database: string): Promise<KeptDatabase[]> {
  const rows = await admin<{name: string; bytes: string; connections: number}[]>`
    select d.datname as name, pg_database_size(d.oid) as bytes,
           (select count(*)::int from pg_stat_activity a where a.datid = d.oid and a.pid <> pg_backend_pid()) as connections
    from pg_database d where d.datname like '%\\_pre\\_rollback\\_%' order by d.datname desc`
  return rows.flatMap((r) => {
    const m = isKeptName(r.name, database) ? KEPT.exec(r.name) : null
    if (!m) return []
    const [, , y, mo, d, h, mi, s] = m.map(Number)
    return [{bytes: Number(r.bytes), connections: r.connections, keptAt: new Date(y, mo - 1, d, h, mi, s).toISOString(), name: r.name}]
  })
}

export async function dropKeptDatabase(admin: Querier, kept: KeptDatabase, database: string): Promise<void> {
  if (!isKeptName(kept.name, database)) throw new UserError(messages.getMessage('error.not-kept', [kept.name, database]))
  try {
    await admin.unsafe(`drop database ${quoteIdent(kept.name)}`)
  } catch (error) {
    if ((error as {code?: string}).code === '55006') {
      throw new UserError(messages.getMessage('error.in-use', [kept.name]), {
        cause: error,
        hint: messages.getMessage('hint.in-use', [kept.name]),
      })
    }
    throw error
  }
}
