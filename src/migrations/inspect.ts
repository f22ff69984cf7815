import path from 'node:path'

import type {MigrationFile} from './files.js'
import {loadMigrations} from './files.js'
import {nselfLedgerApplied} from './ledger.js'
import {assertServerSupported, type Plan, readPlan, serverVersionNum} from './plan.js'
import {connectChecked, type Sql} from '../connection/connect.js'
import type {Target} from '../connection/target.js'

export interface Inspection {
  sql: Sql
  server: {num: number; text: string}
  migrations: MigrationFile[]
  plan: Plan
  /** The 013–016 file names nself's ledger lists as applied; null when the database has no nself ledger. */
  nselfLedger?: string[] | null
}

/** Connect, check the server, load the migrations and read where the database stands. Read-only. */
export async function inspect(target: Target, options: {migrationsDir?: string; to?: number; onNotice?: (m: string) => void} = {}): Promise<Inspection> {
  const migrations = loadMigrations(options.migrationsDir)
  const sql = await connectChecked(target.conn, {onNotice: options.onNotice})
  try {
    const server = await serverVersionNum(sql)
    assertServerSupported(server)
    const plan = await readPlan(sql, migrations, {schema: target.schema, to: options.to})
    const nselfLedger = await nselfLedgerApplied(
      sql,
      migrations.map((m) => path.basename(m.file)),
    )
    return {migrations, nselfLedger, plan, server, sql}
  } catch (error) {
    await sql.end({timeout: 2})
    throw error
  }
}

export function statusDocument(target: Target, ins: Inspection) {
  const {plan} = ins
  return {
    connection: {
      database: target.conn.database,
      host: target.conn.host,
      mode: target.mode,
      port: target.conn.port,
      sources: target.sources,
      user: target.conn.user,
    },
    settings: {
      env: target.cascade ? `${target.cascade.envName} (from ${target.cascade.envSource})` : null,
      envFiles: target.envFiles,
      legacyOrder: target.cascade?.legacyOrder ?? false,
      projectDir: target.projectDir,
      projectDirFrom: target.cascade?.monorepoFrom ? `backend folder of ${target.cascade.monorepoFrom} (it has a .env, as nself's monorepo layout)` : null,
    },
    ledger: {
      current: plan.current,
      recorded: plan.recorded,
      nself: ins.nselfLedger === undefined ? null : ins.nselfLedger,
      schemaMigrations: plan.shape.exists ? {schema: plan.shape.schema, timeColumn: plan.shape.timeColumn ?? null, versionType: plan.shape.versionType} : null,
    },
    migrations: plan.migrations.map((m) => ({
      appliedAt: m.ledger?.applied_at ?? null,
      appliedBy: m.ledger?.applied_by ?? null,
      checksum: m.checksum,
      durationMs: m.ledger?.duration_ms ?? null,
      ledgerChecksum: m.ledger?.checksum ?? null,
      name: m.name,
      state: m.state,
      version: m.version,
    })),
    pending: plan.toApply.map((m) => m.version),
    schema: plan.appSchema,
    server: ins.server.text,
  }
}
