// Scenario 7: the guide's cleanup DELETEs vs `maintain cleanup`, with a writer on the same rows

import {setTimeout as sleep} from 'node:timers/promises'

import {seedMaintenance} from '../../scripts/maintain-fixture.mjs'
import {cli, cloneDb, log, mustRun, onClones, pg, PREFIX, psqlArgs, scratchDir, template, withDb} from '../lib/harness.js'
import {cellOf, fmtNum, median, percentile, sideBySide, table} from '../lib/stats.js'

export const title = '7. Cleanup of old audit rows and consumed prekeys, with a writer on the same rows'

/** The migrated, seeded database every run clones, and what the seed put in it (for the report's text). */
const source = {db: '', expected: undefined, size: undefined}

export const what = (cfg) =>
  `A migrated database with ${fmtNum(cfg.cleanupRows)} audit log rows (60 % older than 90 days) and ${fmtNum(cfg.cleanupRows)} one-time prekeys (40 % consumed over 30 days ago): ${fmtNum(source.expected?.auditDelete ?? NaN)} aged audit rows and ${fmtNum(source.expected?.prekeyDelete ?? NaN)} consumed prekeys to delete, ${fmtNum(source.size ?? NaN, 'B')}, cloned for each run. `
  + `A writer, one operation every 5 ms, inserts audit rows, sets user_id to NULL on old audit rows and updates old consumed prekeys (what a user or device deletion does to them), at random and at the oldest old row still there (the next row a cleanup batch takes). Its latencies are whole statements, wall time on the client. `
  + `Guide: \`psql -c\` with its two DELETE statements. Ours: \`node bin/run.js db e2ee maintain cleanup --yes --json --local -d DB\` (defaults: batches of 2,000, 20 ms pause, 200 ms lock_timeout).`

/**
 * What the app does to the rows cleanup deletes: records new audit events, sets user_id to NULL on old audit rows
 * (ON DELETE SET NULL of a deleted user) and touches old consumed prekeys (a device deletion's cascade locks
 * them), both at random and at the oldest old row still there (the next one cleanup takes). One connection, one
 * operation at a time; each operation's latency is recorded.
 */
function startKeyWriter(database, pauseMs) {
  const sql = pg(database)
  const latencies = []
  let running = true
  let failures = 0
  // The writer's lock waits as the server sees them: pg_locks.waitstart (PostgreSQL 14+) of its ungranted lock,
  // sampled every 10 ms from another connection; each wait's last sample is its length (to 10 ms).
  const lockWaits = new Map()
  const sampling = (async () => {
    const probe = pg(database)
    try {
      const [{pid}] = await sql`select pg_backend_pid() as pid`
      while (running) {
        const rows =
          await probe`select waitstart, extract(epoch from clock_timestamp() - waitstart) * 1000 as ms from pg_locks where pid = ${pid} and not granted and waitstart is not null`
        for (const r of rows) lockWaits.set(r.waitstart.getTime(), Number(r.ms))
        await sleep(10)
      }
    } finally {
      await probe.end({timeout: 2})
    }
  })()
  const done = (async () => {
    const [{maxAudit, maxPrekey}] =
      await sql`select (select max(id) from nchat_e2ee_audit_log)::int as "maxAudit", (select max(id) from nchat_one_time_prekeys)::int as "maxPrekey"`
    let i = 0
    while (running) {
      const t = performance.now()
      try {
        const op = i++ % 5
        if (op === 0) await sql`insert into nchat_e2ee_audit_log (event_type, metadata) values ('session_established', '{"class": "new"}')`
        else if (op === 1) await sql`update nchat_e2ee_audit_log set user_id = null where id = ${1 + Math.floor(Math.random() * maxAudit)}`
        else if (op === 2)
          await sql`update nchat_one_time_prekeys set prekey_public = prekey_public where id = ${1 + Math.floor(Math.random() * maxPrekey)} and is_consumed`
        // The oldest old row still there: the next row a cleanup batch takes, so the writer meets its row locks.
        else if (op === 3)
          await sql`update nchat_e2ee_audit_log set user_id = null where id = (select id from nchat_e2ee_audit_log where created_at < now() - interval '90 days' order by created_at limit 1)`
        else
          await sql`update nchat_one_time_prekeys set prekey_public = prekey_public where id = (select id from nchat_one_time_prekeys where is_consumed and consumed_at < now() - interval '30 days' order by consumed_at limit 1)`
      } catch {
        failures++
      }
      latencies.push(performance.now() - t)
      await sleep(pauseMs)
    }
  })()
  return {
    async stop() {
      running = false
      await done
      await sampling
      await sql.end({timeout: 2})
      return {latencies, failures, lockWaits: [...lockWaits.values()]}
    },
  }
}

async function cleanupSource(cfg) {
  if (source.db) return source.db
  const db = await cloneDb(await template(cfg), `${PREFIX}_s7_src`)
  await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-backup', '--skip-dryrun', '-d', db], scratchDir('s7_migrate'))
  const t0 = performance.now()
  await withDb(db, async (sql) => {
    const devices = Math.max(1, Math.round(cfg.cleanupRows / 1000))
    source.expected = await seedMaintenance(sql, {auditRows: cfg.cleanupRows, devices, prekeysPerDevice: Math.round(cfg.cleanupRows / devices)})
    await sql.unsafe('VACUUM ANALYZE nchat_e2ee_audit_log, nchat_one_time_prekeys')
    const [{size}] = await sql`select pg_database_size(current_database())::bigint as size`
    source.size = Number(size)
  })
  log(`s7 source ${db}: ${cfg.cleanupRows} audit rows and prekeys, ${fmtNum(source.size, 'B')}, seeded in ${fmtNum(performance.now() - t0, 'ms')}`)
  source.db = db
  return db
}

const GUIDE_CLEANUP_SQL = `DELETE FROM nchat_e2ee_audit_log WHERE created_at < NOW() - INTERVAL '90 days';
DELETE FROM nchat_one_time_prekeys WHERE is_consumed = TRUE AND consumed_at < NOW() - INTERVAL '30 days';`

export async function measure(cfg) {
  return onClones(cfg, await cleanupSource(cfg), 's7', async (db, way, r) => {
    const writer = startKeyWriter(db, 5)
    await sleep(500)
    const t0 = performance.now()
    let deleted
    let longestBatchMs
    let batches
    if (way === 'guide') {
      const res = await mustRun('psql', psqlArgs(db, '-c', GUIDE_CLEANUP_SQL))
      deleted = source.expected.auditDelete + source.expected.prekeyDelete
      if (/ERROR/.test(res.stderr)) throw new Error(res.stderr)
    } else {
      const res = await cli(['db', 'e2ee', 'maintain', 'cleanup', '--yes', '--json', '-d', db], scratchDir(`s7_${r}`))
      deleted = res.json.deleted
      longestBatchMs = Math.max(...res.json.tables.map((t) => t.longestBatchMs))
      batches = res.json.tables.reduce((s, t) => s + t.batches, 0)
    }
    const cleanupMs = performance.now() - t0
    await sleep(500)
    const w = await writer.stop()
    const lat = w.latencies
    const left = await withDb(db, async (sql) => {
      const [row] = await sql`select (select count(*) from nchat_e2ee_audit_log where metadata->>'class' = 'old')::int as audit,
        (select count(*) from nchat_one_time_prekeys where prekey_id % 10 <= 3)::int as prekeys`
      return row.audit + row.prekeys
    })
    const row = {
      deleted,
      left,
      cleanupMs,
      rowsPerS: deleted / (cleanupMs / 1000),
      writes: lat.length,
      failures: w.failures,
      maxMs: Math.max(...lat),
      p99Ms: percentile(lat, 99),
      slow: lat.filter((x) => x > cfg.slowMs).length,
      longestBatchMs,
      batches,
      lockWaits: w.lockWaits.length,
      maxLockWaitMs: Math.max(0, ...w.lockWaits),
      lockWaitsOver: w.lockWaits.filter((x) => x > cfg.slowMs).length,
      auditDeleted: source.expected.auditDelete,
      prekeysDeleted: source.expected.prekeyDelete,
    }
    log(
      `s7 run ${r} ${way}: ${row.deleted} rows in ${fmtNum(cleanupMs, 'ms')} (${fmtNum(row.rowsPerS)} rows/s), writes ${row.writes}, longest ${fmtNum(row.maxMs, 'ms')}, >${cfg.slowMs} ms: ${row.slow}, lock waits ${row.lockWaits} (longest ${fmtNum(row.maxLockWaitMs, 'ms')}, >${cfg.slowMs} ms: ${row.lockWaitsOver}), left ${left}`,
    )
    return row
  })
}

export function report(cfg, res) {
  const col = (k, unit) => sideBySide(res, k, unit)
  const rows = [
    ["writer's longest lock wait (pg_locks.waitstart, sampled every 10 ms)", ...col('maxLockWaitMs', 'ms')],
    [
      `writer's lock waits seen / over ${cfg.slowMs} ms (the lock timeout)`,
      ...['guide', 'ours'].map((k) => res[k].map((x) => `${fmtNum(x.lockWaits)} / ${fmtNum(x.lockWaitsOver)}`).join(', ')),
      '',
    ],
    ["writer's longest operation (whole statement, client wall time)", ...col('maxMs', 'ms')],
    ['p99 writer operation', ...col('p99Ms', 'ms')],
    [`writer operations over ${cfg.slowMs} ms`, ...col('slow')],
    ['rows deleted', ...col('deleted')],
    ['old rows left', ...col('left')],
    ['cleanup wall time (ours: whole command)', ...col('cleanupMs', 'ms')],
    ['rows deleted per second', ...col('rowsPerS')],
    ['longest batch (ours)', 'n/a', cellOf(res.ours, 'longestBatchMs', 'ms'), ''],
  ]
  const t = table(['metric', 'guide (two plain DELETEs)', 'ours (maintain cleanup)', 'ours/guide'], rows)
  const med = (way, k) => median(res[way].map((x) => x[k]))
  const text =
    `The guide's DELETE holds the lock of every row it deletes until it commits: a writer touching one of those rows (a user or device deletion, here an UPDATE of an old row) waited on a lock up to ${fmtNum(med('guide', 'maxLockWaitMs'), 'ms')} (its longest operation ${fmtNum(med('guide', 'maxMs'), 'ms')}). `
    + `Ours deletes in batches of at most 2,000 rows, each one statement and its own transaction with a 200 ms lock_timeout and a statement_timeout of half that (a batch never holds its rows longer), committed without waiting for the WAL flush, skipping rows a writer holds: the writer's longest lock wait was ${fmtNum(med('ours', 'maxLockWaitMs'), 'ms')}, under the 200 ms lock timeout; its longest operation, whole statement on the client (its own commit and the machine's scheduling included), ${fmtNum(med('ours', 'maxMs'), 'ms')}. `
    + `It is slower end to end (a pause between batches, a count before and after), which is the price of never holding many rows at once.`
  return {table: t, text}
}
