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
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.steps.preflight')

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
  checks.push({detail: messages.getMessage('check.ServerVersion', [server.text]), name: 'server version', status: 'ok'})
  checks.push({detail: messages.getMessage('check.Database', [schema]), name: 'nChat database', status: 'ok'})

  try {
    assertCanMigrate(plan, o.to)
    const drift = plan.migrations.filter((m) => m.state !== 'pending' && m.state !== 'applied')
    const nothing = messages.getMessage('info.nothing')
    const at = plan.current ?? nothing
    const toApply = plan.toApply.map((m) => m.name).join(', ') || nothing
    checks.push({
      detail: drift.length
        ? messages.getMessage('check.LedgerDrift', [at, toApply, drift.map((m) => `${m.name} ${m.state}`).join(', ')])
        : messages.getMessage('check.Ledger', [at, toApply]),
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
      detail: messages.getMessage('check.MissingTables', [schema, missing.map((m) => m.name).join(', ')]),
      fix: messages.getMessage('check.MissingTables.fix'),
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
    const where = o.tools.container ? messages.getMessage('check.ToolsInContainer', [o.tools.container]) : messages.getMessage('check.ToolsLocal')
    checks.push({
      ...judgeTools(Math.floor(server.num / 10_000), tools, where, {dumps: o.backupDir !== undefined, local: !o.tools.container}),
      name: 'client tools',
    })
  }

  const failed = checks.find((c) => c.status === 'fail')
  if (failed) throw new UserError(messages.getMessage('error.Failed', [failed.name, failed.detail]), {hint: failed.fix})
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
  let notOwner = false
  let noCreateDb = false
  const db = quoteIdent(p.db)
  const role = quoteIdent(p.role)
  if (!p.superuser) {
    if (!p.ledgerSchema && !p.dbCreate) {
      missing.push(messages.getMessage('privilege.CreateOnDatabase', [p.db, LEDGER_SCHEMA]))
      grants.push(`GRANT CREATE ON DATABASE ${db} TO ${role}`)
    } else if (p.ledgerSchema && !p.ledgerTable && !p.ledgerSchemaCreate) {
      missing.push(messages.getMessage('privilege.LedgerSchema', [LEDGER_SCHEMA]))
      grants.push(`GRANT USAGE, CREATE ON SCHEMA ${LEDGER_SCHEMA} TO ${role}`)
    } else if (p.ledgerTable && !p.ledgerWrite) {
      missing.push(messages.getMessage('privilege.LedgerTable', [LEDGER_TABLE]))
      grants.push(`GRANT USAGE ON SCHEMA ${LEDGER_SCHEMA} TO ${role}; GRANT SELECT, INSERT, UPDATE ON ${LEDGER_TABLE} TO ${role}`)
    }
    if (!p.schemaCreate) {
      missing.push(messages.getMessage('privilege.CreateOnSchema', [schema]))
      grants.push(`GRANT CREATE ON SCHEMA ${quoteIdent(schema)} TO ${role}`)
    }
    if (p.ledger && !p.ledgerWriteApp) {
      missing.push(messages.getMessage('privilege.AppLedger', [p.ledger]))
      grants.push(`GRANT SELECT, INSERT, DELETE ON ${p.ledger} TO ${role}`)
    }
    const notOwned = tables.filter((t) => !t.owns).map((t) => `${schema}.${t.name}`)
    if (notOwned.length > 0) {
      notOwner = true
      missing.push(
        notOwned.length === 1
          ? messages.getMessage('privilege.OwnershipOne', [listJoin(notOwned)])
          : messages.getMessage('privilege.OwnershipMany', [listJoin(notOwned)]),
      )
    }
    const noRefs = tables.filter((t) => t.owns && !t.refs).map((t) => `${schema}.${t.name}`)
    if (noRefs.length > 0) {
      missing.push(messages.getMessage('privilege.References', [listJoin(noRefs)]))
      grants.push(`GRANT REFERENCES ON ${noRefs.join(', ')} TO ${role}`)
    }
    if (o.needCreateDb && !p.createdb) {
      noCreateDb = true
      missing.push(messages.getMessage('privilege.CreateDb'))
    }
    if (unreadable.length > 0) {
      const names = listJoin(unreadable.map((u) => u.name))
      missing.push(unreadable.length > 5 ? messages.getMessage('privilege.SelectAndMore', [names]) : messages.getMessage('privilege.Select', [names]))
    }
  }
  if (missing.length > 0) {
    const fix = [
      ...grants.map((g) => `${g};`),
      ...(notOwner ? [messages.getMessage('privilege.fix.Owner')] : []),
      ...(noCreateDb ? [messages.getMessage('privilege.fix.CreateDb')] : []),
    ].join(' ')
    return {detail: messages.getMessage('privilege.Lacks', [p.role, listJoin(missing)]), fix: fix || undefined, name: 'privileges', status: 'fail'}
  }
  const altered = TOUCHED_TABLES.join(', ')
  let detail: string
  if (p.superuser && o.needCreateDb) detail = messages.getMessage('privilege.OkSuperuserCreateDb', [p.role, altered])
  else if (p.superuser) detail = messages.getMessage('privilege.OkSuperuser', [p.role, altered])
  else if (o.needCreateDb) detail = messages.getMessage('privilege.OkCreateDb', [p.role, altered])
  else detail = messages.getMessage('privilege.Ok', [p.role, altered])
  return {
    detail,
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
      detail: messages.getMessage('space.BackupShort', [fmtBytes(free), probe, fmtBytes(need)]),
      fix: messages.getMessage('space.BackupShort.fix'),
      name: 'backup space',
      status: 'fail',
    }
  }
  return {detail: messages.getMessage('space.BackupOk', [fmtBytes(free), probe, fmtBytes(need)]), name: 'backup space', status: 'ok'}
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
    if (free === undefined || Number.isNaN(free)) return {detail: messages.getMessage('space.ServerUnseen'), name, status: 'warn'}
    const need = databaseBytes + 64 * 1024 * 1024
    if (free < need)
      return {
        detail: messages.getMessage('space.ServerShort', [fmtBytes(free), fmtBytes(need)]),
        fix: messages.getMessage('space.ServerShort.fix'),
        name,
        status: 'fail',
      }
    return {detail: messages.getMessage('space.ServerOk', [fmtBytes(free), fmtBytes(need)]), name, status: 'ok'}
  } catch {
    return {detail: messages.getMessage('space.ServerUnreadable'), name, status: 'warn'}
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
  const probes: Array<{name: string; table: string; column?: string; query: string; fix: string; found: (n: string) => string}> = [
    {
      fix: messages.getMessage('probe.OrphanedKeys.fix'),
      found: (n) => messages.getMessage('probe.OrphanedKeys.found', [n]),
      name: 'orphaned identity keys',
      query: `select count(*) as n from ${s}.nchat_identity_keys k where not exists (select 1 from ${s}.nchat_users u where u.id = k.user_id)`,
      table: 'nchat_identity_keys',
    },
    {
      fix: messages.getMessage('probe.DuplicateDevices.fix'),
      found: (n) => messages.getMessage('probe.DuplicateDevices.found', [n]),
      name: 'duplicate device ids',
      query: `select count(*) as n from (select device_id from ${s}.nchat_identity_keys group by device_id having count(*) > 1) d`,
      table: 'nchat_identity_keys',
    },
    {
      fix: messages.getMessage('probe.InvalidMethods.fix'),
      found: (n) => messages.getMessage('probe.InvalidMethods.found', [n]),
      name: 'invalid verification methods',
      query: `select count(*) as n from ${s}.nchat_safety_numbers where verification_method is not null and verification_method not in ('manual', 'qr_code', 'out_of_band')`,
      table: 'nchat_safety_numbers',
    },
    {
      column: 'sender_device_id',
      fix: messages.getMessage('probe.UnknownDevices.fix'),
      found: (n) => messages.getMessage('probe.UnknownDevices.found', [n]),
      name: 'unknown sender devices',
      query: `select count(*) as n from ${s}.nchat_messages m where m.sender_device_id is not null and not exists (select 1 from ${s}.nchat_identity_keys k where k.device_id = m.sender_device_id)`,
      table: 'nchat_messages',
    },
  ]
  for (const p of probes) {
    if (!(await exists(p.table, p.column))) continue
    if (p.column && !(await exists('nchat_identity_keys'))) continue
    const [{n}] = await sql.unsafe<{n: string}[]>(p.query)
    checks.push(
      Number(n) > 0
        ? {detail: p.found(n), fix: p.fix, name: p.name, status: 'fail'}
        : {detail: messages.getMessage('probe.NoneFound'), name: p.name, status: 'ok'},
    )
  }
  return checks
}
