import {statfs} from 'node:fs/promises'
import {existsSync} from 'node:fs'
import path from 'node:path'

import {UserError} from '../errors.js'
import {LEDGER_SCHEMA, LEDGER_TABLE} from '../migrations/ledger.js'
import {assertCanMigrate} from '../migrations/plan.js'
import {quoteIdent} from '../pg/identifiers.js'
import type {PgTools} from '../connection/tools.js'
import type {Target} from '../connection/target.js'
import {judgeTools} from '../connection/versions.js'
import {TOUCHED_TABLES} from '../nchat/tables.js'
import {existingTableShapes} from '../verify/existing-tables.js'
import type {Inspection} from '../migrations/inspect.js'
import {fmtBytes} from '../text.js'

export interface Check {
  name: string
  status: 'ok' | 'warn' | 'fail'
  detail: string
  fix?: string
}

export interface PreflightReport {
  checks: Check[]
  /** Bytes the tables hold (heap + TOAST, no indexes): the backup's upper bound before compression. */
  dataBytes: number
  databaseBytes: number
}

export interface PreflightOptions {
  target: Target
  ins: Inspection
  tools?: PgTools
  /** Where the backup will be written; undefined when no backup is taken. */
  backupDir?: string
  needCreateDb: boolean
  to?: number
}

/**
 * Every check the guide leaves to the operator, turned into a check with a cause and a fix. Read-only.
 * Throws a UserError naming the first failure; warnings are returned.
 */
export async function preflight(o: PreflightOptions): Promise<PreflightReport> {
  const {sql, plan, server} = o.ins
  const checks: Check[] = []
  const schema = plan.appSchema
  checks.push({detail: `PostgreSQL ${server.text}`, name: 'server version', status: 'ok'})
  checks.push({detail: `nChat tables in schema ${schema}`, name: 'nChat database', status: 'ok'})

  try {
    assertCanMigrate(plan, o.to)
    const drift = plan.migrations.filter((m) => m.state !== 'pending' && m.state !== 'applied')
    checks.push({
      detail: `schema_migrations at ${plan.current ?? 'nothing'}; to apply: ${plan.toApply.map((m) => m.name).join(', ') || 'nothing'}${drift.length ? ` (${drift.map((m) => `${m.name} ${m.state}`).join(', ')})` : ''}`,
      name: 'ledger',
      status: 'ok',
    })
  } catch (error) {
    checks.push({detail: (error as Error).message, fix: (error as UserError).hint, name: 'ledger', status: 'fail'})
  }

  const missing = await sql<{name: string}[]>`
    select t as name from unnest(${TOUCHED_TABLES}::text[]) t
    where not exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = ${schema} and c.relname = t)`
  if (missing.length > 0) {
    checks.push({
      detail: `schema ${schema} has no ${missing.map((m) => m.name).join(', ')}`,
      fix: 'This is not a complete nChat v0.3.0 database.',
      name: 'nChat tables',
      status: 'fail',
    })
  }

  const [sizes] = await sql<{db: string; data: string}[]>`
    select pg_database_size(current_database())::text as db,
      coalesce(sum(pg_table_size(c.oid)), 0)::text as data
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p', 'm') and n.nspname not in ('pg_catalog', 'information_schema')`
  const dataBytes = Number(sizes.data)
  const databaseBytes = Number(sizes.db)

  if (o.backupDir) checks.push(await backupSpaceCheck(o.backupDir, dataBytes))

  checks.push(await privilegeCheck(o))

  if (o.needCreateDb) checks.push(await serverSpaceCheck(o, databaseBytes))
  checks.push(...(await dataChecks(o)))
  checks.push(...(await existingTableShapes(sql, plan)))

  if (o.tools) {
    const tools = {pg_dump: await o.tools.toolMajor('pg_dump'), pg_restore: await o.tools.toolMajor('pg_restore')}
    const where = o.tools.container ? `in container ${o.tools.container}` : 'local client tools'
    checks.push({
      ...judgeTools(Math.floor(server.num / 10_000), tools, where, {dumps: o.backupDir !== undefined, local: !o.tools.container}),
      name: 'client tools',
    })
  }

  const failed = checks.find((c) => c.status === 'fail')
  if (failed) throw new UserError(`Preflight failed (${failed.name}): ${failed.detail}.`, {hint: failed.fix})
  return {checks, dataBytes, databaseBytes}
}

/**
 * Every privilege the run will use, checked before anything is written, so that a missing one is named here
 * and not discovered half-way (e.g. when the first migration writes our ledger). All missing ones are named at once.
 */
async function privilegeCheck(o: PreflightOptions): Promise<Check> {
  const {sql, plan} = o.ins
  const schema = plan.appSchema
  const [p] = await sql<
    {
      role: string
      db: string
      superuser: boolean
      createdb: boolean
      dbCreate: boolean
      schemaCreate: boolean
      ledgerSchema: boolean
      ledgerSchemaCreate: boolean
      ledgerTable: boolean
      ledgerWrite: boolean
      ledger: string | null
      ledgerWriteApp: boolean
    }[]
  >`
    select current_user as role, current_database() as db,
      r.rolsuper as superuser, r.rolcreatedb as createdb,
      has_database_privilege(current_database(), 'CREATE') as "dbCreate",
      has_schema_privilege(${schema}, 'CREATE') as "schemaCreate",
      (to_regnamespace(${LEDGER_SCHEMA}) is not null) as "ledgerSchema",
      case when to_regnamespace(${LEDGER_SCHEMA}) is null then false else has_schema_privilege(${LEDGER_SCHEMA}, 'USAGE')
        and has_schema_privilege(${LEDGER_SCHEMA}, 'CREATE') end as "ledgerSchemaCreate",
      (to_regclass(${LEDGER_TABLE}) is not null) as "ledgerTable",
      case when to_regclass(${LEDGER_TABLE}) is null then false else has_schema_privilege(${LEDGER_SCHEMA}, 'USAGE')
        and has_table_privilege(${LEDGER_TABLE}, 'SELECT') and has_table_privilege(${LEDGER_TABLE}, 'INSERT')
        and has_table_privilege(${LEDGER_TABLE}, 'UPDATE') end as "ledgerWrite",
      to_regclass(${`${quoteIdent(schema)}.schema_migrations`})::text as ledger,
      coalesce(has_table_privilege(to_regclass(${`${quoteIdent(schema)}.schema_migrations`}), 'SELECT')
        and has_table_privilege(to_regclass(${`${quoteIdent(schema)}.schema_migrations`}), 'INSERT')
        and has_table_privilege(to_regclass(${`${quoteIdent(schema)}.schema_migrations`}), 'DELETE'), false) as "ledgerWriteApp"
    from pg_roles r where r.rolname = current_user`
  const tables = await sql<{name: string; owns: boolean; refs: boolean}[]>`
    select c.relname as name, pg_has_role(current_user, c.relowner, 'USAGE') as owns, has_table_privilege(c.oid, 'REFERENCES') as refs
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = ${schema} and c.relname = any(${TOUCHED_TABLES}) order by c.relname`
  // pg_dump reads every table and sequence of the database: one it may not read fails the backup.
  const unreadable = o.backupDir
    ? await sql<{name: string}[]>`
    select format('%I.%I', n.nspname, c.relname) as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p', 'm', 'S') and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\_%'
      and not has_table_privilege(c.oid, 'SELECT') order by 1 limit 6`
    : []

  const missing: string[] = []
  const grants: string[] = []
  const db = quoteIdent(p.db)
  const role = quoteIdent(p.role)
  if (!p.superuser) {
    if (!p.ledgerSchema && !p.dbCreate) {
      missing.push(`CREATE on database ${p.db} (to create the ledger schema ${LEDGER_SCHEMA})`)
      grants.push(`GRANT CREATE ON DATABASE ${db} TO ${role}`)
    } else if (p.ledgerSchema && !p.ledgerTable && !p.ledgerSchemaCreate) {
      missing.push(`USAGE and CREATE on schema ${LEDGER_SCHEMA} (to create the ledger table)`)
      grants.push(`GRANT USAGE, CREATE ON SCHEMA ${LEDGER_SCHEMA} TO ${role}`)
    } else if (p.ledgerTable && !p.ledgerWrite) {
      missing.push(`SELECT, INSERT and UPDATE on ${LEDGER_TABLE} (the ledger)`)
      grants.push(`GRANT USAGE ON SCHEMA ${LEDGER_SCHEMA} TO ${role}; GRANT SELECT, INSERT, UPDATE ON ${LEDGER_TABLE} TO ${role}`)
    }
    if (!p.schemaCreate) {
      missing.push(`CREATE on schema ${schema} (for the new tables)`)
      grants.push(`GRANT CREATE ON SCHEMA ${quoteIdent(schema)} TO ${role}`)
    }
    if (p.ledger && !p.ledgerWriteApp) {
      missing.push(`SELECT, INSERT and DELETE on ${p.ledger} (to record each migration)`)
      grants.push(`GRANT SELECT, INSERT, DELETE ON ${p.ledger} TO ${role}`)
    }
    const notOwned = tables.filter((t) => !t.owns).map((t) => `${schema}.${t.name}`)
    if (notOwned.length > 0) missing.push(`ownership of ${listJoin(notOwned)} (to alter ${notOwned.length === 1 ? 'it' : 'them'})`)
    const noRefs = tables.filter((t) => t.owns && !t.refs).map((t) => `${schema}.${t.name}`)
    if (noRefs.length > 0) {
      missing.push(`REFERENCES on ${listJoin(noRefs)} (for the new foreign keys)`)
      grants.push(`GRANT REFERENCES ON ${noRefs.join(', ')} TO ${role}`)
    }
    if (o.needCreateDb && !p.createdb) missing.push('CREATEDB (for the dry-run copy)')
    if (unreadable.length > 0) {
      missing.push(`SELECT on ${listJoin(unreadable.map((u) => u.name))}${unreadable.length > 5 ? ' and more' : ''} (pg_dump reads every table for the backup)`)
    }
  }
  if (missing.length > 0) {
    const fix = [
      ...grants.map((g) => `${g};`),
      ...(missing.some((m) => m.startsWith('ownership')) ? ['run as the owner of the nChat tables (POSTGRES_USER)'] : []),
      ...(missing.some((m) => m.startsWith('CREATEDB')) ? ['use a role with CREATEDB or pass --skip-dryrun'] : []),
    ].join(' ')
    return {detail: `role ${p.role} lacks ${listJoin(missing)}`, fix: fix || undefined, name: 'privileges', status: 'fail'}
  }
  return {
    detail: `${p.role}${p.superuser ? ' (superuser)' : ''} may create the ledger and the new tables and alter ${TOUCHED_TABLES.join(', ')}${o.needCreateDb ? ', and create the dry-run database' : ''}`,
    name: 'privileges',
    status: 'ok',
  }
}

function listJoin(items: string[]): string {
  return items.length <= 1 ? items.join('') : `${items.slice(0, -1).join(', ')} and ${items.at(-1)}`
}

async function backupSpaceCheck(dir: string, dataBytes: number): Promise<Check> {
  let probe = path.resolve(dir)
  while (!existsSync(probe) && path.dirname(probe) !== probe) probe = path.dirname(probe)
  const fs = await statfs(probe)
  const free = fs.bavail * fs.bsize
  // A custom-format dump holds no index data and is compressed; half the table bytes is a safe upper bound
  // for text-heavy chat data, plus room to spare.
  const need = Math.ceil(dataBytes * 0.5) + 64 * 1024 * 1024
  if (free < need) {
    return {
      detail: `${fmtBytes(free)} free at ${probe}, the backup may need up to ${fmtBytes(need)}`,
      fix: 'Free disk space or choose another --backup-dir.',
      name: 'backup space',
      status: 'fail',
    }
  }
  return {detail: `${fmtBytes(free)} free at ${probe} (backup estimated below ${fmtBytes(need)})`, name: 'backup space', status: 'ok'}
}

async function serverSpaceCheck(o: PreflightOptions, databaseBytes: number): Promise<Check> {
  const name = 'server space'
  try {
    const [{dir}] = await o.ins.sql<{dir: string}[]>`select current_setting('data_directory') as dir`
    let free: number | undefined
    if (o.tools?.container) {
      const {stdout} = await o.tools.exec(['df', '-Pk', dir])
      const lines = String(stdout ?? '')
        .trim()
        .split('\n')
      const cols = lines[lines.length - 1].split(/\s+/)
      free = Number(cols[3]) * 1024
    } else if (existsSync(dir)) {
      const fs = await statfs(dir)
      free = fs.bavail * fs.bsize
    }
    if (free === undefined || Number.isNaN(free))
      return {detail: "cannot see the server's disk from here; the dry-run clone needs room for the touched tables", name, status: 'warn'}
    const need = databaseBytes + 64 * 1024 * 1024
    if (free < need)
      return {
        detail: `${fmtBytes(free)} free on the server, the dry-run clone may need up to ${fmtBytes(need)}`,
        fix: 'Free space on the server, or pass --skip-dryrun.',
        name,
        status: 'fail',
      }
    return {detail: `${fmtBytes(free)} free on the server for the clone (at most ${fmtBytes(need)})`, name, status: 'ok'}
  } catch {
    return {detail: 'data_directory is not readable by this role; free space for the clone not checked', name, status: 'warn'}
  }
}

/** The guide's troubleshooting queries as checks: rows a hand-run left that the migration would trip on. */
async function dataChecks(o: PreflightOptions): Promise<Check[]> {
  const {sql, plan} = o.ins
  const s = quoteIdent(plan.appSchema)
  const exists = async (table: string, column?: string) => {
    const rows =
      await sql`select 1 from information_schema.columns where table_schema = ${plan.appSchema} and table_name = ${table} ${column ? sql`and column_name = ${column}` : sql``} limit 1`
    return rows.length > 0
  }
  const checks: Check[] = []
  const probes: Array<{name: string; table: string; column?: string; query: string; fix: string; what: string}> = [
    {
      fix: "Delete them (the guide's Issue 1): DELETE FROM nchat_identity_keys WHERE user_id NOT IN (SELECT id FROM nchat_users).",
      name: 'orphaned identity keys',
      query: `select count(*) as n from ${s}.nchat_identity_keys k where not exists (select 1 from ${s}.nchat_users u where u.id = k.user_id)`,
      table: 'nchat_identity_keys',
      what: 'identity keys whose user no longer exists',
    },
    {
      fix: "Keep one row per device_id (the guide's Issue 2).",
      name: 'duplicate device ids',
      query: `select count(*) as n from (select device_id from ${s}.nchat_identity_keys group by device_id having count(*) > 1) d`,
      table: 'nchat_identity_keys',
      what: 'device ids used by more than one identity key',
    },
    {
      fix: "Set them to NULL or one of manual, qr_code, out_of_band (the guide's CHECK let them in, DESIGN D1).",
      name: 'invalid verification methods',
      query: `select count(*) as n from ${s}.nchat_safety_numbers where verification_method is not null and verification_method not in ('manual', 'qr_code', 'out_of_band')`,
      table: 'nchat_safety_numbers',
      what: 'safety numbers with a verification method outside manual/qr_code/out_of_band',
    },
    {
      column: 'sender_device_id',
      fix: 'Set nchat_messages.sender_device_id to NULL where the device is unknown.',
      name: 'unknown sender devices',
      query: `select count(*) as n from ${s}.nchat_messages m where m.sender_device_id is not null and not exists (select 1 from ${s}.nchat_identity_keys k where k.device_id = m.sender_device_id)`,
      table: 'nchat_messages',
      what: 'messages whose sender_device_id has no identity key',
    },
  ]
  for (const p of probes) {
    if (!(await exists(p.table, p.column))) continue
    if (p.column && !(await exists('nchat_identity_keys'))) continue
    const [{n}] = await sql.unsafe<{n: string}[]>(p.query)
    checks.push(Number(n) > 0 ? {detail: `${n} ${p.what}`, fix: p.fix, name: p.name, status: 'fail'} : {detail: `none found`, name: p.name, status: 'ok'})
  }
  return checks
}
