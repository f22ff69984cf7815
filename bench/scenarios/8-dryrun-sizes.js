// Scenario 8: dry run and backup at 100k, 1M and 5M messages (issue 11). Its own module, bench/dryrun-sizes.js
// (also runnable alone); its databases come from cached templates (bench/template-cache.js).

import {table} from '../lib/stats.js'

export const title = '8. Dry run and backup at 100k, 1M and 5M messages (issue 11)'

export const what = () =>
  'Guide: `pg_dump` (plain), `createdb`, `psql` restore, its SQL, `dropdb`, end to end. Ours: `dryrun --yes --json` end to end (no backup: a rehearsal dump of the schema and the rows the copy restores, removed at the end; the copy with the whole schema and only the rows 013-016 read, apply, verify, forecast). '
  + 'Forecast against the actual apply (`migrate --skip-backup --skip-dryrun`) on the same database; backup formats in MB/s of database. Details: [benchmarks-dryrun.md](benchmarks-dryrun.md) (`node bench/dryrun-sizes.js`).'

export async function measure(cfg) {
  const {dryrunSizes} = await import('../dryrun-sizes.js')
  return dryrunSizes(cfg.quick ? [20_000, 100_000] : [100_000, 1_000_000, 5_000_000])
}

export async function report(_cfg, res) {
  const {backupTable, dryrunTable} = await import('../dryrun-sizes.js')
  const [dh, ...dr] = dryrunTable(res)
  const [bh, ...br] = backupTable(res)
  return {table: `${table(dh, dr)}\n\n${table(bh, br)}`, text: ''}
}
