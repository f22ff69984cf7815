import {pipeline} from 'node:stream/promises'

import type {MigrationFile} from '../migrations/files.js'
import type {RunReport} from '../migrations/runner.js'
import {concurrentIndexName, referencedTables, stripComments, validatedConstraintName, type Statement} from '../migrations/statements.js'
import type {Sql} from '../connection/connect.js'
import {quoteIdent} from '../pg/identifiers.js'
import type {SlimTable} from './content.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.clone.forecast')

/**
 * The forecast of the production apply time (issue 11). On a clone that holds every row, the apply time measured
 * there is the forecast. On a clone whose big altered tables are empty (content.ts), the statements that
 * scan those tables (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT) ran on an empty table, so only their fixed
 * cost was measured. Their cost grows with the table's pages: t = fixed + perPage x pages. A sample of
 * production's pages (TABLESAMPLE SYSTEM, read only) is copied into a scratch table of the clone with the same
 * columns and vacuumed, each such statement is replayed on it REPLAYS times (the fastest counts), and
 *   forecast = t(empty) + (t(sample) - t(empty)) x productionPages / samplePages.
 * productionPages is the table's main fork as production has it now (pg_relation_size / block_size, so bloat is
 * counted as the scans will meet it); pg_class.reltuples is reported beside it.
 * Not forecast: waiting for production's long transactions and lock retries (they depend on its traffic).
 */

/** Pages copied into the sample at most (32 MiB with 8 KiB blocks): small tables are copied whole. */
export const SAMPLE_PAGES = 4096
const REPLAYS = 5
const SAMPLE_PREFIX = 'nself_e2ee_sample_'

/** How close the forecast came to the actual apply in the benchmark (docs/benchmarks-dryrun.md), stated in reports. */
export const FORECAST_ERROR =
  "from 1.1 s under to 1.7 s over the actual apply (−38 % to +152 %; it over-estimates more often than not), as measured in 36 runs at 100k, 1M and 5M messages (four runs of node bench/dryrun-sizes.js --runs 3 on a shared 2-core machine, where the actual apply of the same database varied up to 2.5× between runs: 0.53 s to 1.34 s at 1M messages; docs/benchmarks-dryrun.md); waits for production's own traffic not included"

export interface TableSample {
  table: string
  productionPages: number
  productionRows: number
  samplePages: number
  sampleRows: number
  /** productionPages / samplePages. */
  factor: number
  copyMs: number
}

export interface ScaledStatement {
  migration: string
  line: number
  table: string
  /** On the clone's empty table. */
  cloneMs: number
  /** Each replay on the sample. */
  sampleMs: number[]
  forecastMs: number
}

export interface Forecast {
  /** The forecast apply time on production. */
  ms: number
  /** The apply as measured on the clone. */
  cloneMs: number
  basis: 'every row' | 'sample'
  samples: TableSample[]
  scaled: ScaledStatement[]
  error: string
}

export interface ForecastOptions {
  /** Production: read only (the sample and the table sizes). */
  prod: Sql
  /** Opens a one-connection pool on production for the sample's COPY (postgres.js 3.4.9 leaves a connection that
   *  served COPY … TO STDOUT as a stream unusable, so it gets a pool of its own, ended after). */
  openProd: () => Sql
  /** A one-connection pool on the clone. */
  clone: Sql
  schema: string
  run: RunReport
  applyMs: number
  migrations: MigrationFile[]
  slim: SlimTable[]
  log?: (line: string) => void
}

export async function forecastApply(o: ForecastOptions): Promise<Forecast> {
  const slimTables = new Set(o.slim.map((s) => s.table))
  const byTable = new Map<string, Array<{migration: string; statement: Statement; cloneMs: number}>>()
  for (const m of o.run.migrations) {
    const file = o.migrations.find((f) => f.name === m.name)
    for (const r of m.statements) {
      if (r.mode === 'transaction') continue
      const statement = file?.statements.find((s) => s.line === r.line)
      const table = statement ? referencedTables(statement.sql)[0] : undefined
      if (!statement || !table || !slimTables.has(table)) continue
      byTable.set(table, [...(byTable.get(table) ?? []), {cloneMs: r.durationMs, migration: m.name, statement}])
    }
  }
  const out: Forecast = {basis: o.slim.length ? 'sample' : 'every row', cloneMs: o.applyMs, error: FORECAST_ERROR, ms: o.applyMs, samples: [], scaled: []}
  if (byTable.size === 0) return out
  await o.clone.unsafe(`set search_path to ${quoteIdent(o.schema)}`)
  for (const [table, statements] of byTable) {
    const sample = await takeSample(o, table)
    out.samples.push(sample)
    for (const s of statements) {
      const sampleMs: number[] = []
      try {
        for (let i = 0; i < REPLAYS; i++) sampleMs.push(await replay(o, table, s.statement))
      } catch (error) {
        // Not a shape this module can replay: its clone time stands, and the report says it was not scaled.
        o.log?.(messages.getMessage('log.not-replayed', [s.statement.summary, (error as Error).message]))
        out.scaled.push({cloneMs: s.cloneMs, forecastMs: s.cloneMs, line: s.statement.line, migration: s.migration, sampleMs: [], table})
        continue
      }
      // The fastest replay: the machine's other load only ever adds time, so the minimum is the statement's own cost.
      const perSample = Math.max(0, Math.min(...sampleMs) - s.cloneMs)
      const forecastMs = Math.round(s.cloneMs + perSample * sample.factor)
      out.scaled.push({cloneMs: s.cloneMs, forecastMs, line: s.statement.line, migration: s.migration, sampleMs, table})
      out.ms += forecastMs - s.cloneMs
    }
    await o.clone.unsafe(`drop table if exists ${sampleName(table)}`)
  }
  return out
}

function sampleName(table: string): string {
  return quoteIdent((SAMPLE_PREFIX + table).slice(0, 63))
}

async function takeSample(o: ForecastOptions, table: string): Promise<TableSample> {
  const q = `${quoteIdent(o.schema)}.${quoteIdent(table)}`
  const [size] = await o.prod.unsafe<{pages: string; rows: number}[]>(
    `select pg_relation_size(c.oid) / current_setting('block_size')::bigint as pages, greatest(c.reltuples, 0)::float8 as rows
       from pg_class c where c.oid = $1::text::regclass`,
    [q],
  )
  const productionPages = Number(size.pages)
  const columns = await o.prod.unsafe<{name: string}[]>(
    `select attname as name from pg_attribute where attrelid = $1::text::regclass and attnum > 0 and not attisdropped order by attnum`,
    [q],
  )
  const cols = columns.map((c) => quoteIdent(c.name)).join(', ')
  const name = sampleName(table)
  await o.clone.unsafe(`drop table if exists ${name}`)
  // LIKE without INCLUDING GENERATED: a generated column is copied as the value production stored.
  await o.clone.unsafe(`create table ${name} (like ${q} including defaults)`)
  const percent = productionPages === 0 ? 100 : Math.min(100, (SAMPLE_PAGES / productionPages) * 100)
  const t0 = Date.now()
  if (productionPages > 0) {
    const side = o.openProd()
    try {
      const from = await side.unsafe(`copy (select ${cols} from only ${q} tablesample system (${percent.toFixed(6)}) repeatable (11)) to stdout`).readable()
      const into = await o.clone.unsafe(`copy ${name} (${cols}) from stdin`).writable()
      await pipeline(from, into)
    } finally {
      await side.end({timeout: 1}).catch(() => {})
    }
  }
  // Vacuumed like a table in service (hint bits set, visibility map): a freshly loaded one costs more per page.
  await o.clone.unsafe(`vacuum (analyze) ${name}`)
  const copyMs = Date.now() - t0
  const [got] = await o.clone.unsafe<{pages: string; rows: string}[]>(
    `select pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint as pages, (select count(*) from ${name}) as rows`,
    [`${quoteIdent(o.schema)}.${name}`],
  )
  const samplePages = Number(got.pages)
  const factor = samplePages === 0 ? 0 : productionPages / samplePages
  o.log?.(messages.getMessage('log.sample', [table, got.rows, samplePages, productionPages, percent.toFixed(1), copyMs, factor.toFixed(1)]))
  return {copyMs, factor, productionPages, productionRows: Math.round(size.rows), sampleRows: Number(got.rows), samplePages, table}
}

/** Run the statement's work on the sample table once; returns its time in ms. */
async function replay(o: ForecastOptions, table: string, s: Statement): Promise<number> {
  const name = sampleName(table)
  const index = concurrentIndexName(s)
  if (index) {
    const m = /^\s*CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+ON\s+(?:ONLY\s+)?\S+?\s*(\([\s\S]*?)\s*;?\s*$/i.exec(
      stripComments(s.sql),
    )
    if (!m) throw new Error(`cannot replay ${s.summary} on a sample`)
    const idx = quoteIdent(`${SAMPLE_PREFIX}idx`)
    const t0 = performance.now()
    await o.clone.unsafe(`create ${m[1] ?? ''}index concurrently ${idx} on ${name} ${m[2]}`)
    const ms = performance.now() - t0
    await o.clone.unsafe(`drop index ${idx}`)
    return ms
  }
  const constraint = validatedConstraintName(s)
  if (constraint) {
    const [con] = await o.clone.unsafe<{def: string}[]>(
      `select pg_get_constraintdef(oid) as def from pg_constraint where conrelid = $1::text::regclass and conname = $2`,
      [`${quoteIdent(o.schema)}.${quoteIdent(table)}`, constraint],
    )
    if (!con) throw new Error(`cannot replay ${s.summary}: no constraint ${constraint} on the clone's ${table}`)
    const cname = quoteIdent(`${SAMPLE_PREFIX}con`)
    await o.clone.unsafe(`alter table ${name} add constraint ${cname} ${con.def.replace(/\s+NOT VALID\s*$/i, '')} not valid`)
    const t0 = performance.now()
    await o.clone.unsafe(`alter table ${name} validate constraint ${cname}`)
    const ms = performance.now() - t0
    await o.clone.unsafe(`alter table ${name} drop constraint ${cname}`)
    return ms
  }
  throw new Error(`cannot replay ${s.summary} on a sample`)
}
