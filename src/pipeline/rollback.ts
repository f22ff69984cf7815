import {toUserError, UserError} from '../errors.js'
import {createdTables, existingTables} from '../migrations/plan.js'
import {readLedgerVersion} from '../migrations/ledger.js'
import {migrateDown, type RunReport} from '../migrations/runner.js'
import {connect, connectChecked, quoteIdent} from '../target/connect.js'
import type {CommandLock} from '../migrations/command-lock.js'
import {testPause} from '../test-pause.js'
import type {Target} from '../target/target.js'
import {PgTools} from '../target/tools.js'
import {type BackupInfo, type ListedBackup, manifestPathFor, timestamp, verifyBackup} from '../steps/backup.js'
import {checkPlainDump, newestRollbackSource} from '../steps/nself-dumps.js'
import {inspect, type Inspection} from '../steps/inspect.js'
import {checkRestoredMatchesManifest, restoreIntoNewDatabase, swapDatabases} from '../steps/restore.js'
import {backupProduction, runSteps, type Step, timed} from './shared.js'
import {beginChangingCommand} from './command.js'
import {assertCanConfirm, confirm, fmtMs} from './ui.js'

export interface RollbackOptions {
  target: Target
  strategy: 'restore' | 'down'
  yes: boolean
  json: boolean
  backupFile?: string
  to: number
  jobs: number
  migrationsDir?: string
  lockTimeoutMs: number
  maxLockWaitMs: number
  runLockWaitMs: number
}

export interface LossItem {
  what: string
  rows: number
}

export interface RollbackSummary {
  ok: boolean
  strategy: 'restore' | 'down'
  database: string
  before: number | null
  after: number | null
  backup: {file: string; created_at: string; ledger_version: number | null} | null
  /** What the rollback destroys (rows written since the backup, or rows in the tables the down files drop). */
  lost: LossItem[]
  reverted: number[]
  kept: {database: string; dropWith: string} | null
  swapWindowMs: number | null
  timings: Record<string, number>
}

interface Ctx {
  ins?: Inspection
  tools?: PgTools
  backup?: ListedBackup | BackupInfo
  restored?: {name: string; drop(): Promise<void>}
  lost: LossItem[]
  down?: RunReport
  kept?: string
  windowMs?: number
  after?: number | null
  timings: Record<string, number>
}

export async function runRollback(o: RollbackOptions): Promise<RollbackSummary> {
  assertCanConfirm(o.yes, 'Rolling back the production database')
  // One command at a time on this database (a swap replaces it: the lock lives in the maintenance database).
  const lock = await beginChangingCommand(o.target, {command: 'rollback', waitMs: o.runLockWaitMs})
  try {
    return await (o.strategy === 'restore' ? rollbackRestore(o, lock) : rollbackDown(o, lock))
  } finally {
    await lock.release()
  }
}

/** Rollback option 1 of the guide, done safely (D7): restore beside, check, then swap names in one short step. */
async function rollbackRestore(o: RollbackOptions, lock: CommandLock): Promise<RollbackSummary> {
  const ctx: Ctx = {lost: [], timings: {}}
  const db = o.target.conn.database
  const admin = lock.admin
  try {
    const before: Step<Ctx>[] = [
      {
        task: async (c, task) => timed(c, 'backup check', async () => {
          c.ins = await inspect(o.target, {migrationsDir: o.migrationsDir})
          await lock.assertSameDatabase(c.ins.sql)
          c.tools = await PgTools.create(o.target)
          const firstMigration = Math.min(...c.ins.migrations.map((m) => m.version))
          let file = o.backupFile
          if (!file) {
            const found = await newestRollbackSource({
              before: migrationStart(c.ins), database: db, dir: o.target.backupDir, firstMigration, log: (l) => { task.output = l }, tools: c.tools,
            })
            if (!found) {
              throw new UserError(`No pre-migration backup of ${db} in ${o.target.backupDir}; refusing to roll back without a way back.`, {
                hint: 'Name one with --backup FILE, or use --strategy down.',
              })
            }
            file = found.file
          }
          // A dump without our manifest (nself's own backup) is read to the end and judged by what it holds.
          const checked = await verifyBackup({database: db, file, requireManifest: false, tools: c.tools})
          const manifest = await checkPlainDump(c.tools, file, checked.manifest, db, firstMigration)
          c.backup = {file, manifest, manifestFile: manifestPathFor(file)}
          task.title = `Backup ${file}: sha256 and archive verified (taken ${checked.manifest.created_at}, at migration ${checked.manifest.ledger_version ?? 'none'})`
        }),
        title: 'Check the backup',
      },
      {
        task: async (c, task) => timed(c, 'restore', async () => {
          c.restored = await restoreIntoNewDatabase({
            admin, backup: c.backup!, jobs: o.jobs, log: (l) => { task.output = l },
            onProgress: (p) => { task.output = `restoring: ${p.done}/${p.total} archive entries` }, target: o.target, tools: c.tools!,
          })
          const rsql = connect(o.target.conn, {database: c.restored.name, max: 1})
          try {
            await checkRestoredMatchesManifest(rsql, c.backup!.manifest, (s) => readLedgerVersion(s, c.backup!.manifest.schema))
          } finally {
            await rsql.end({timeout: 2})
          }
          task.title = `Restored into ${c.restored.name} and checked against the manifest (row counts, ledger ${c.backup!.manifest.ledger_version ?? 'none'})`
        }),
        title: 'Restore into a new database',
      },
      {
        task: async (c, task) => timed(c, 'loss', async () => {
          c.lost = await lossSinceBackup(c.ins!, c.backup!.manifest)
          task.title = c.lost.length ? `Since the backup: ${c.lost.map((l) => `${l.rows} ${l.what}`).join(', ')} would be lost` : 'Nothing was written since the backup'
        }),
        title: 'Count what the rollback loses',
      },
    ]
    await runSteps(before, ctx, o.json)

    if (!o.yes) {
      process.stderr.write(`\nAbout to replace ${db} by ${ctx.restored!.name} (the backup of ${ctx.backup!.manifest.created_at}). Connections to ${db} will be ended for a moment.\n`)
      for (const l of ctx.lost) process.stderr.write(`  will be lost: ${l.rows} ${l.what}\n`)
      if (!(await confirm('Swap now?', false))) {
        throw new UserError(`Stopped at the confirmation; ${db} was not changed.`)
      }
    }

    await ctx.ins!.sql.end({timeout: 2})
    await testPause('rollback:before-swap')
    lock.assertHeld()
    const keptName = `${db}_pre_rollback_${timestamp()}`.slice(0, 63)
    const after: Step<Ctx>[] = [
      {
        task: async (c, task) => timed(c, 'swap', async () => {
          const r = await swapDatabases({admin, keptName, live: db, liveOid: lock.oid, log: (l) => { task.output = l }, replacement: c.restored!.name})
          c.kept = r.keptName
          c.windowMs = r.windowMs
          task.title = `Swapped: ${db} is the restored backup; the replaced database is kept as ${r.keptName} (new connections waited ${fmtMs(r.windowMs)})`
        }),
        title: 'Swap the databases',
      },
      {
        task: async (c, task) => {
          const sql = await connectChecked(o.target.conn, {max: 1})
          try {
            c.after = await readLedgerVersion(sql, o.target.schema)
          } finally {
            await sql.end({timeout: 2})
          }
          task.title = `Status: ${db} is at migration ${c.after ?? 'none'}`
        },
        title: 'Status',
      },
    ]
    await runSteps(after, ctx, o.json)
    return {
      after: ctx.after ?? null,
      backup: {created_at: ctx.backup!.manifest.created_at, file: ctx.backup!.file, ledger_version: ctx.backup!.manifest.ledger_version},
      before: ctx.ins!.plan.current,
      database: db,
      kept: {database: ctx.kept!, dropWith: `DROP DATABASE ${quoteIdent(ctx.kept!)};`},
      lost: ctx.lost,
      ok: true,
      reverted: [],
      strategy: 'restore',
      swapWindowMs: ctx.windowMs ?? null,
      timings: ctx.timings,
    }
  } catch (error) {
    if (ctx.restored && !ctx.kept) {
      // Say what is true: the restored copy is gone, or still there (and removed by the next command).
      const dropped = await ctx.restored.drop().then(() => `the restored copy ${ctx.restored!.name} was dropped`, (dropError: unknown) =>
        `the restored copy ${ctx.restored!.name} could not be dropped (${toUserError(dropError).message.replace(/\.$/, '')}); the next nself db e2ee command drops it`)
      if (error instanceof UserError) {
        error.message = `${error.message.replace(/\.$/, '')}; ${dropped}.`
      }
    }
    throw error
  } finally {
    await ctx.ins?.sql.end({timeout: 2}).catch(() => {})
  }
}

/** Rows written since the backup: per counted table the difference, and messages newer than the backup. */
/** When the upgrade began: the earliest recorded apply of 013-016 (undefined when none is recorded with a time). */
function migrationStart(ins: Inspection): Date | undefined {
  const times = ins.plan.migrations.map((m) => m.ledger?.applied_at).filter((t): t is Date => t instanceof Date)
  return times.length > 0 ? new Date(Math.min(...times.map((t) => t.getTime()))) : undefined
}

async function lossSinceBackup(ins: Inspection, manifest: {created_at: string; row_counts: Record<string, number>; schema: string}): Promise<LossItem[]> {
  const {sql, plan} = ins
  const s = quoteIdent(plan.appSchema)
  const lost: LossItem[] = []
  const [{newer}] = await sql.unsafe<{newer: string}[]>(`select count(*)::bigint as newer from ${s}.nchat_messages where created_at > $1`, [manifest.created_at])
  if (Number(newer) > 0) lost.push({rows: Number(newer), what: 'messages created after the backup'})
  for (const [table, count] of Object.entries(manifest.row_counts)) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${s}.${quoteIdent(table)}`)
    const delta = Number(n) - count
    if (delta !== 0 && table !== 'nchat_messages') lost.push({rows: Math.abs(delta), what: `${delta > 0 ? 'more' : 'fewer'} rows in ${table} than in the backup`})
  }
  lost.push(...(await rowsInNewTables(ins, ins.migrations.filter((m) => plan.migrations.find((x) => x.version === m.version)?.state !== 'pending').map((m) => m.version))))
  return lost
}

async function rowsInNewTables(ins: Inspection, versions: number[]): Promise<LossItem[]> {
  const {sql, plan} = ins
  const out: LossItem[] = []
  // 013 and 014 create the same seven tables: each is counted once.
  const created = [...new Set(ins.migrations.filter((m) => versions.includes(m.version)).flatMap(createdTables))]
  for (const t of await existingTables(sql, plan.appSchema, created)) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${quoteIdent(plan.appSchema)}.${quoteIdent(t)}`)
    if (Number(n) > 0) out.push({rows: Number(n), what: `rows in ${t}`})
  }
  const s = quoteIdent(plan.appSchema)
  const cols = await sql<{table_name: string; column_name: string}[]>`
    select table_name, column_name from information_schema.columns
    where table_schema = ${plan.appSchema} and ((table_name = 'nchat_messages' and column_name = 'is_encrypted') or (table_name = 'nchat_channels' and column_name = 'enforce_encryption'))`
  if (versions.includes(14) && cols.some((c) => c.column_name === 'is_encrypted')) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${s}.nchat_messages where is_encrypted or encrypted_payload is not null or sender_device_id is not null`)
    if (Number(n) > 0) out.push({rows: Number(n), what: 'encrypted messages (their payload columns are dropped)'})
  }
  if (versions.includes(14) && cols.some((c) => c.column_name === 'enforce_encryption')) {
    const [{n}] = await sql.unsafe<{n: string}[]>(`select count(*)::bigint as n from ${s}.nchat_channels where enforce_encryption`)
    if (Number(n) > 0) out.push({rows: Number(n), what: 'channels enforcing encryption (the setting is dropped)'})
  }
  return out
}

/** Rollback option 2 of the guide, done completely (D6): safety backup, then every down file newest first. */
async function rollbackDown(o: RollbackOptions, lock: CommandLock): Promise<RollbackSummary> {
  const ctx: Ctx = {lost: [], timings: {}}
  const db = o.target.conn.database
  const runner = {beforeWrite: (q: Parameters<CommandLock['assertSameDatabase']>[0]) => lock.assertSameDatabase(q), lockTimeoutMs: o.lockTimeoutMs, maxLockWaitMs: o.maxLockWaitMs, runLockWaitMs: o.runLockWaitMs}
  try {
    ctx.ins = await inspect(o.target, {migrationsDir: o.migrationsDir})
    await lock.assertSameDatabase(ctx.ins.sql)
    const ins = ctx.ins
    if (!ins.migrations.some((m) => m.version === o.to) && o.to !== ins.migrations[0].version - 1) {
      throw new UserError(`--to ${o.to} is not a version this rollback can reach (${ins.migrations[0].version - 1} or one of ${ins.migrations.map((m) => m.version).join(', ')}).`, {exitCode: 2})
    }
    const revert = ins.plan.migrations.filter((m) => m.version > o.to && m.state !== 'pending').map((m) => m.version)
    if (revert.length === 0) {
      return {after: ins.plan.current, backup: null, before: ins.plan.current, database: db, kept: null, lost: [], ok: true, reverted: [], strategy: 'down', swapWindowMs: null, timings: {}}
    }
    ctx.lost = await rowsInNewTables(ins, revert)
    if (!o.yes) {
      process.stderr.write(`\nAbout to revert ${revert.map((v) => ins.migrations.find((m) => m.version === v)!.name).join(', ')} on ${db}.\n`)
      for (const l of ctx.lost) process.stderr.write(`  will be destroyed: ${l.rows} ${l.what}\n`)
      if (ctx.lost.length === 0) process.stderr.write('  the tables to drop hold no rows\n')
      if (!(await confirm('Revert now? A safety backup is taken first.', false))) throw new UserError(`Stopped at the confirmation; ${db} was not changed.`)
    }
    const tasks: Step<Ctx>[] = [
      {
        task: async (c, task) => timed(c, 'backup', async () => {
          await lock.assertSameDatabase(ins.sql)
          c.tools = await PgTools.create(o.target)
          c.backup = await backupProduction({ins, output: (l) => { task.output = l }, purpose: 'pre-rollback', target: o.target, tools: c.tools})
          task.title = `Safety backup: ${c.backup.file}`
        }),
        title: 'Safety backup',
      },
      {
        task: async (c, task) => timed(c, 'down', async () => {
          c.down = await migrateDown({...runner, log: (l) => { task.output = l }, migrations: ins.migrations, schema: ins.plan.appSchema, sql: ins.sql, to: o.to})
          task.title = `Reverted ${c.down.migrations.map((m) => m.name).join(', ')}`
        }),
        title: 'Run the down migrations, newest first',
      },
      {
        task: async (c, task) => {
          c.after = await readLedgerVersion(ins.sql, ins.plan.appSchema)
          task.title = `Status: ${db} is at migration ${c.after ?? 'none'}`
        },
        title: 'Status',
      },
    ]
    await runSteps(tasks, ctx, o.json)
    return {
      after: ctx.after ?? null,
      backup: ctx.backup ? {created_at: ctx.backup.manifest.created_at, file: ctx.backup.file, ledger_version: ctx.backup.manifest.ledger_version} : null,
      before: ins.plan.current,
      database: db,
      kept: null,
      lost: ctx.lost,
      ok: true,
      reverted: ctx.down?.reverted ?? [],
      strategy: 'down',
      swapWindowMs: null,
      timings: ctx.timings,
    }
  } finally {
    await ctx.ins?.sql.end({timeout: 2}).catch(() => {})
  }
}
