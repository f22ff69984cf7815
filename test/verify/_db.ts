// Shared setup for the verify/vacuum tests: a fresh v0.3.0 database brought to a migration version with the
// real runner, and a postgres.js pool on it. Every test drops its database in `finally`.
import postgres from 'postgres'

import {loadMigrations} from '../../src/migrations/files.js'
import {migrateUp} from '../../src/migrations/runner.js'
import {ADMIN, createV030Database, type V030Database} from '../helpers/fixture.js'

export const T = 120_000

export interface Migrated {
  db: V030Database
  sql: postgres.Sql
  schema: string
  /** Close the pool and drop the database. */
  done(): Promise<void>
}

export function pool(dbName: string): postgres.Sql {
  return postgres({...ADMIN, connection: {application_name: 'nself-e2ee-tests'}, database: dbName, idle_timeout: 5, max: 4, onnotice: () => {}, prepare: false})
}

/** A v0.3.0 database migrated to `to` (13..16) in `schema`. */
export async function migratedDatabase(to: number, opts: {schema?: 'public' | 'nchat'; messages?: number} = {}): Promise<Migrated> {
  const db = await createV030Database({messages: opts.messages ?? 300, schema: opts.schema ?? 'public'})
  const sql = pool(db.name)
  const done = async () => {
    await sql.end({timeout: 5}).catch(() => {})
    await db.drop()
  }
  try {
    await migrateUp({migrations: loadMigrations(), schema: db.schema, sql, to})
  } catch (error) {
    await done()
    throw error
  }
  return {db, done, schema: db.schema, sql}
}
