/**
 * Verification after the upgrade, done right (docs/deviations.md, D8).
 *
 * The guide's verification queries mix AND/OR without parentheses and compare nothing precisely. Here every
 * object migrations 013..upTo create is checked by its exact name in the application schema against a
 * committed reference snapshot (src/migrations/expected-schema.json, generated from the catalogs of a fresh
 * v0.3.0 database migrated step by step to 016: `node scripts/expected-schema.mjs`): relations, columns
 * (type, nullability, default), indexes (table, definition, pg_index.indisvalid AND indisready), constraints
 * (definition, convalidated, delete rules), functions, sequences. The guide's materialized view, refresh
 * function and triggers (D2) must be gone. Then the data (invariants that hold on a database in use, row counts against the backup
 * manifest), the prekey bundle view against real rows inside a transaction that is always rolled back, and
 * the query plans of the guide's "Query Performance" table.
 */
import {toUserError, UserError} from '../errors.js'
import {GUIDE_LEFTOVERS} from '../nchat/guide.js'
import {validateIdentifier} from '../pg/identifiers.js'
import type {Querier} from '../connection/connect.js'
import {type Catalog, readCatalog} from './catalog.js'
import {checkGuideLeftovers, checkInvalidLeftovers, checkObjects} from './compare.js'
import {loadExpectedSchema} from './expected.js'
import {checkBehaviour, checkData, checkRowCounts} from './functional.js'
import {Checks, type VerifyReport} from './report.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.verify.verify-database')

export interface VerifyOptions {
  /** The application schema (where nchat_users lives). */
  schema: string
  /** Highest migration version expected applied (default: the newest in the snapshot, 16). */
  upTo?: number
  /** The backup manifest: its row counts of nchat_users, nchat_channels and nchat_messages are compared. */
  manifest?: {row_counts: Record<string, number>}
  /** true: a row count that differs from the manifest fails; false (live traffic): it warns with the delta. */
  exactCounts?: boolean
}

/**
 * Check a database against migrations 013..upTo. Never changes anything: the functional checks run in a
 * transaction that is always rolled back.
 */
export async function verifyDatabase(sql: Querier, opts: VerifyOptions): Promise<VerifyReport> {
  const schema = validateIdentifier(opts.schema, 'schema')
  const expected = loadExpectedSchema()
  const versions = Object.keys(expected.migrations).map(Number)
  const upTo = opts.upTo ?? (versions.length > 0 ? Math.max(...versions) : 16)
  if (!Number.isInteger(upTo)) throw new UserError(messages.getMessage('error.up-to-not-whole', [upTo]))
  const checks = new Checks()

  let live: Catalog
  try {
    const ns = await sql<{n: number}[]>`select count(*)::int as n from pg_namespace where nspname = ${schema}`
    if (ns[0].n === 0) {
      checks.fail(`schema ${schema}`, messages.getMessage('fail.no-schema', [schema]))
      return checks.report()
    }
    live = await readCatalog(sql, schema)
  } catch (error) {
    throw toUserError(error, messages.getMessage('what.reading-catalogs', [schema]))
  }

  const brokenTables = checkObjects(checks, expected, live, upTo, schema)
  if (upTo >= GUIDE_LEFTOVERS.since) checkGuideLeftovers(checks, live)
  checkInvalidLeftovers(checks, expected, live, upTo)
  await checkData(checks, sql, schema, live, upTo)
  if (opts.manifest) await checkRowCounts(checks, sql, schema, live, opts.manifest, opts.exactCounts ?? false)
  await checkBehaviour(checks, sql, schema, live, upTo, brokenTables)
  return checks.report()
}
