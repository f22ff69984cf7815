import {setTimeout as sleep} from 'node:timers/promises'

import {isConnectionLost, UserError} from '../errors.js'
import {connect, type Sql} from '../connection/connect.js'
import type {Target} from '../connection/target.js'
import {fitIdentifier, quoteIdent, validateIdentifier} from './identifiers.js'
import {nextSecond, timestamp} from '../text.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.pg.databases')

/**
 * Databases as a whole: the new ones this plugin creates (named and commented so leftovers are recognisable),
 * created like the live one (its encoding, locale, ACL, settings and comment), dropped, and their sessions ended.
 */

export type NewDatabaseKind = 'dryrun' | 'restore'

export const COMMENT_PREFIX: Record<NewDatabaseKind, string> = {
  dryrun: 'nself-e2ee dryrun clone of ',
  restore: 'nself-e2ee restore of ',
}

/** `<db>_e2ee_<kind>_<YYYYMMDDHHMMSS>`, the db part cut so the whole fits PostgreSQL's 63 bytes. */
export function newDatabaseName(database: string, kind: NewDatabaseKind, date = new Date()): string {
  return fitIdentifier(database, `_e2ee_${kind}_${timestamp(date, '')}`)
}

export function quoteLiteral(value: string): string {
  const doubled = value.replaceAll("'", "''")
  return value.includes('\\') ? `E'${doubled.replaceAll('\\', '\\\\')}'` : `'${doubled}'`
}

// The live database's properties, so a new database can be created like it

export interface DatabaseLike {
  name: string
  owner: string
  /** CREATE DATABASE options: encoding and locale, as the live database has them. */
  createOptions: string
  connLimit: number
  /** GRANT/REVOKE statements for the new database's ACL (none when the live one has the default ACL). */
  acl: {privilege: string; grantee: string | null; grantable: boolean}[] | null
  /** ALTER DATABASE … SET settings: role null for the whole database. Values are never logged. */
  settings: {role: string | null; name: string; value: string}[]
  comment: string | null
  serverVersionNum: number
  superuser: boolean
  currentUser: string
  /** The current user may create databases owned by `owner`. */
  canOwnAs: boolean
}

export async function describeDatabase(sql: Sql, database: string): Promise<DatabaseLike> {
  const rows = await sql<{d: Record<string, unknown>; owner: string; enc: string; comment: string | null}[]>`
    select to_jsonb(d) as d, pg_get_userbyid(d.datdba) as owner, pg_encoding_to_char(d.encoding) as enc,
           shobj_description(d.oid, 'pg_database') as comment
    from pg_database d where d.datname = ${database}`
  if (rows.length === 0) throw new UserError(messages.getMessage('error.no-database', [database]))
  const {comment, d, enc, owner} = rows[0]
  const [me] = await sql<{user: string; superuser: boolean; num: number; can_own: boolean}[]>`
    select current_user as user, r.rolsuper as superuser, current_setting('server_version_num')::int as num,
           pg_has_role(current_user, ${owner}::name, 'MEMBER') as can_own
    from pg_roles r where r.rolname = current_user`

  const opts: string[] = [`ENCODING ${quoteLiteral(enc)}`, `LC_COLLATE ${quoteLiteral(String(d.datcollate))}`, `LC_CTYPE ${quoteLiteral(String(d.datctype))}`]
  const provider = d.datlocprovider as string | undefined
  if (provider === 'i') {
    opts.push('LOCALE_PROVIDER icu', `ICU_LOCALE ${quoteLiteral(String(d.daticulocale ?? d.datlocale))}`)
    if (d.daticurules) opts.push(`ICU_RULES ${quoteLiteral(String(d.daticurules))}`)
  } else if (provider === 'b') {
    opts.push('LOCALE_PROVIDER builtin', `BUILTIN_LOCALE ${quoteLiteral(String(d.datlocale))}`)
  } else if (provider === 'c') {
    opts.push('LOCALE_PROVIDER libc')
  }

  const acl =
    d.datacl === null || d.datacl === undefined
      ? null
      : await sql<{privilege: string; grantee: string | null; grantable: boolean}[]>`
    select a.privilege_type as privilege, case when a.grantee = 0 then null else pg_get_userbyid(a.grantee) end as grantee,
           a.is_grantable as grantable
    from pg_database d cross join lateral aclexplode(d.datacl) a where d.datname = ${database}`
  const settingRows = await sql<{role: string | null; config: string[]}[]>`
    select case when s.setrole = 0 then null else pg_get_userbyid(s.setrole) end as role, s.setconfig as config
    from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = ${database}`
  const settings = settingRows.flatMap((r) =>
    r.config.map((c) => {
      const i = c.indexOf('=')
      return {name: c.slice(0, i), role: r.role, value: c.slice(i + 1)}
    }),
  )

  return {
    acl: acl ? [...acl] : null,
    canOwnAs: me.superuser || me.can_own,
    comment,
    connLimit: Number(d.datconnlimit ?? -1),
    createOptions: opts.join(' '),
    currentUser: me.user,
    name: database,
    owner,
    serverVersionNum: me.num,
    settings,
    superuser: me.superuser,
  }
}

/** GUCs whose values are lists of (possibly double-quoted) elements, as pg_dump's variable_is_guc_list_quote. */
const LIST_GUCS = new Set([
  'local_preload_libraries',
  'search_path',
  'session_preload_libraries',
  'shared_preload_libraries',
  'temp_tablespaces',
  'unix_socket_directories',
])

function splitGucList(value: string): string[] {
  const out: string[] = []
  let i = 0
  while (i < value.length) {
    while (value[i] === ' ') i++
    let item = ''
    if (value[i] === '"') {
      i++
      while (i < value.length) {
        if (value[i] === '"') {
          if (value[i + 1] === '"') {
            item += '"'
            i += 2
            continue
          }
          i++
          break
        }
        item += value[i++]
      }
    }
    while (i < value.length && value[i] !== ',') item += value[i++]
    out.push(item.trim())
    i++
  }
  return out
}

function settingSql(name: string, value: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*$/.test(name)) {
    throw new UserError(messages.getMessage('error.setting-not-copyable', [name]))
  }
  const nameSql = name
    .split('.')
    .map((p) => (/^[a-z_][a-z0-9_$]*$/.test(p) ? p : quoteIdent(p)))
    .join('.')
  const valueSql = LIST_GUCS.has(name.toLowerCase())
    ? splitGucList(value)
        .map((v) => quoteLiteral(v))
        .join(', ')
    : quoteLiteral(value)
  return `${nameSql} TO ${valueSql}`
}

/**
 * CREATE DATABASE `name` like `live`: same owner (when the current user may assign it), encoding and locale,
 * from template0; then the comment, the database-level settings (ALTER DATABASE/ROLE … SET, e.g. search_path),
 * the database ACL and optionally the connection limit, none of which a dump restored without --create carries.
 */
export async function createDatabaseLike(
  admin: Sql,
  name: string,
  live: DatabaseLike,
  comment: string,
  options: {connLimit?: boolean; log?: (line: string) => void} = {},
): Promise<void> {
  const owner = live.canOwnAs ? ` OWNER ${quoteIdent(live.owner)}` : ''
  if (!live.canOwnAs) options.log?.(messages.getMessage('log.owned-by-us', [live.currentUser, live.owner, name, live.currentUser]))
  await admin.unsafe(`CREATE DATABASE ${quoteIdent(name)}${owner} TEMPLATE template0 ${live.createOptions}`)
  const q = quoteIdent(name)
  await admin.unsafe(`COMMENT ON DATABASE ${q} IS ${quoteLiteral(comment)}`)
  for (const s of live.settings) {
    const target = s.role === null ? `DATABASE ${q}` : `ROLE ${quoteIdent(s.role)} IN DATABASE ${q}`
    await admin.unsafe(`ALTER ${target} SET ${settingSql(s.name, s.value)}`)
  }
  if (live.acl) {
    await admin.unsafe(`REVOKE ALL ON DATABASE ${q} FROM PUBLIC`)
    for (const a of live.acl) {
      const grantee = a.grantee === null ? 'PUBLIC' : quoteIdent(a.grantee)
      await admin.unsafe(`GRANT ${a.privilege} ON DATABASE ${q} TO ${grantee}${a.grantable ? ' WITH GRANT OPTION' : ''}`)
    }
  }
  if (options.connLimit && live.connLimit !== -1) {
    await admin.unsafe(`ALTER DATABASE ${q} WITH CONNECTION LIMIT ${Number(live.connLimit)}`)
  }
}

/**
 * `fn` again (twice at most) when it failed on a lost connection: a pool whose sessions the server ended learns
 * it only when the socket closes, so its next query can still meet the dead one; the retry gets a new connection.
 */
export async function retryOnLostConnection<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn()
    } catch (error) {
      if (attempt >= 3 || !isConnectionLost(error)) throw error
      await sleep(50 * attempt)
    }
  }
}

/** End every session on `name` and drop it (WITH (FORCE) from PostgreSQL 13). */
export async function dropDatabase(admin: Sql, name: string): Promise<void> {
  validateIdentifier(name, 'database')
  await retryOnLostConnection(async () => {
    const [{num}] = await admin<{num: number}[]>`select current_setting('server_version_num')::int as num`
    await admin`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`
    await admin.unsafe(`DROP DATABASE IF EXISTS ${quoteIdent(name)}${num >= 130_000 ? ' WITH (FORCE)' : ''}`)
  })
}

/** A name of this kind that no database has yet (waits for the next second when taken). */
export async function freeDatabaseName(admin: Sql, database: string, kind: NewDatabaseKind): Promise<string> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const name = newDatabaseName(database, kind)
    const rows = await admin`select 1 from pg_database where datname = ${name}`
    if (rows.length === 0) return name
    await nextSecond()
  }
  throw new UserError(messages.getMessage('error.no-free-name', [kind, database]))
}

/** End the server sessions that carry `appName` (children `docker exec` left running), over a fresh connection. */
export async function terminateSessions(target: Target, appName: string, database = target.conn.database): Promise<number> {
  const sql = connect(target.conn, {database, max: 1})
  try {
    const rows = await sql`
      select pg_terminate_backend(pid) as ok from pg_stat_activity
      where application_name = ${appName} and pid <> pg_backend_pid() and backend_type = 'client backend'`
    return rows.length
  } catch {
    return 0
  } finally {
    await sql.end({timeout: 2}).catch(() => {})
  }
}
