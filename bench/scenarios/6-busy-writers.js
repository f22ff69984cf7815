// Scenario 6: busy writers, flat out, during the migration (issue 9: lock order and deadlocks)

import os from 'node:os'
import {setTimeout as sleep} from 'node:timers/promises'

import {applyMigration, log, onClones, pg, query, RUN, scratchDir, template} from '../lib/harness.js'
import {fmtNum, median, percentile, sideBySide, stats, table} from '../lib/stats.js'

export const title = '6. Busy writers during the migration (lock order, deadlocks)'

export const what = (cfg) =>
  `A v0.3.0 database with ${fmtNum(cfg.messages)} messages; ${BUSY_WRITERS} writers, each on its own connection, INSERT into \`nchat_messages\` (with a channel and a user, so each runs the foreign-key checks) back to back, as fast as the server takes them, from ${cfg.quick ? 1 : 2} s before the migration until 0.5 s after it; the server's default deadlock_timeout. Latencies are those of the inserts sent while the migration ran. `
  + `Guide: \`psql -d DB < guide_014_by_hand.sql\`. Ours: \`node bin/run.js db e2ee migrate --yes --json --local --skip-backup --skip-dryrun -d DB\` (lock timeout 200 ms). `
  + `Afterwards the committed inserts are counted in the table.`

const BUSY_WRITERS = 6

/**
 * `n` writers, each on its own connection, inserting messages back to back as fast as the server takes them
 * (closed loop: each waits for its insert, then sends the next). Every insert names a channel and a user, so it
 * runs the foreign-key checks on nchat_channels and nchat_users, as the app's do. The server's own
 * deadlock_timeout applies (not lowered).
 */
function startBusyWriters(database, n, tag) {
  const app = `e2ee-bench-${RUN}-busy`
  const pools = Array.from({length: n}, () => pg(database, {extra: {connection: {application_name: app}}}))
  const latencies = []
  const starts = []
  const errors = {}
  let running = true
  const loops = pools.map(async (sql, i) => {
    const [{channel, userId}] =
      await sql`select (select id from nchat_channels order by id offset ${i} limit 1) as channel, (select id from nchat_users order by id offset ${i} limit 1) as "userId"`
    while (running) {
      const t = performance.now()
      try {
        await sql`insert into nchat_messages (channel_id, user_id, content) values (${channel}, ${userId}, ${tag})`
      } catch (error) {
        errors[error.code ?? 'unknown'] = (errors[error.code ?? 'unknown'] ?? 0) + 1
      }
      starts.push(t)
      latencies.push(performance.now() - t)
    }
  })
  // How long an insert has been running while it waits for a lock (sampled): lock waits apart from a slow disk or CPU.
  const lockWaits = []
  const sampler = pg(database)
  const sampling = (async () => {
    while (running) {
      const rows = await sampler`select extract(epoch from clock_timestamp() - query_start) * 1000 as ms from pg_stat_activity
        where application_name = ${app} and wait_event_type = 'Lock'`.catch(() => [])
      for (const r of rows) lockWaits.push({at: performance.now(), ms: Number(r.ms)})
      await sleep(10)
    }
  })()
  return {
    async stop() {
      running = false
      await Promise.all([...loops, sampling])
      await Promise.all([...pools, sampler].map((p) => p.end({timeout: 2})))
      return {latencies, starts, errors, lockWaits}
    },
  }
}

export async function measure(cfg) {
  const tag = `busy write ${RUN}`
  return onClones(cfg, await template(cfg), 's6', async (db, way, r) => {
    const load1 = os.loadavg()[0]
    const writers = startBusyWriters(db, BUSY_WRITERS, tag)
    await sleep(cfg.quick ? 1000 : 2000)
    const t0 = performance.now()
    const res = await applyMigration(way, db, scratchDir(`s6_${r}`))
    const migrationMs = performance.now() - t0
    await sleep(500)
    const w = await writers.stop()
    const [{rows}] = await query(db, `select count(*)::int as rows from nchat_messages where content = '${tag}'`)
    const failures = Object.values(w.errors).reduce((a, b) => a + b, 0)
    // Only the inserts sent while the migration ran; the ones before it show what the loaded machine does alone.
    const lat = w.latencies.filter((_, i) => w.starts[i] >= t0 && w.starts[i] < t0 + migrationMs)
    const before = w.latencies.filter((_, i) => w.starts[i] < t0)
    const row = {
      migrationMs,
      applyMs: res.json?.applyMs,
      lockRetries: res.json?.lockRetries,
      inserts: w.latencies.length - failures,
      failures,
      errors: w.errors,
      lost: w.latencies.length - failures - rows,
      maxMs: Math.max(...lat),
      p99Ms: percentile(lat, 99),
      slow: lat.filter((x) => x > cfg.slowMs).length,
      slowPct: (100 * lat.filter((x) => x > cfg.slowMs).length) / Math.max(1, lat.length),
      beforeMaxMs: Math.max(...before),
      load1,
      lockWaitMaxMs: Math.max(0, ...w.lockWaits.filter((x) => x.at >= t0 && x.at < t0 + migrationMs).map((x) => x.ms)),
    }
    log(
      `s6 run ${r} ${way}: migration ${fmtNum(migrationMs, 'ms')}, inserts ${row.inserts}, max ${fmtNum(row.maxMs, 'ms')}, >${cfg.slowMs} ms: ${row.slow}, errors ${JSON.stringify(w.errors)}, lost ${row.lost}`,
    )
    return row
  })
}

export function report(cfg, res) {
  const col = (k, unit) => sideBySide(res, k, unit)
  const rows = [
    ['migration wall time (ours: whole command)', ...col('migrationMs', 'ms')],
    ['longest insert wait (sent while the migration ran)', ...col('maxMs', 'ms')],
    ['p99 insert latency (same)', ...col('p99Ms', 'ms')],
    [`inserts that waited > ${cfg.slowMs} ms, the lock timeout (same)`, ...col('slow')],
    [`share of them that waited > ${cfg.slowMs} ms (%)`, ...col('slowPct')],
    ['longest wait for a lock seen in an insert (sampled every 10 ms)', ...col('lockWaitMaxMs', 'ms')],
    [`reference: longest insert wait in the ${cfg.quick ? 1 : 2} s before the migration (the machine alone)`, ...col('beforeMaxMs', 'ms')],
    ['failed inserts (deadlock victims or other errors)', ...col('failures')],
    ['committed inserts missing afterwards', ...col('lost')],
    ['inserts committed (during the whole window)', ...col('inserts')],
  ]
  const t = table(['metric', 'guide (psql < guide SQL)', 'ours (migrate --skip-backup --skip-dryrun)', 'ours/guide'], rows)
  const med = (side, k) => median(res[side].map((x) => x[k]))
  const codes = [...new Set([...res.guide, ...res.ours].flatMap((x) => Object.keys(x.errors)))]
  const load = stats([...res.guide, ...res.ours].map((x) => x.load1))
  const text =
    `The machine's 1-minute load average was ${fmtNum(load.min)}–${fmtNum(load.max)} at the start of the runs (2 CPUs, shared), so single inserts stall for hundreds of ms with no migration running (reference row). `
    + `With ${BUSY_WRITERS} writers inserting as fast as they could, the guide's plain statements took ${fmtNum(med('guide', 'migrationMs'), 'ms')} and its longest insert wait was ${fmtNum(med('guide', 'maxMs'), 'ms')} (median of runs; ${fmtNum(med('guide', 'slow'))} inserts over ${cfg.slowMs} ms): its plain CREATE INDEX and FOREIGN KEY on \`nchat_messages\` hold off every insert while they read the table. `
    + `Sampled in the server, the longest an insert was seen waiting for a lock was ${fmtNum(med('guide', 'lockWaitMaxMs'), 'ms')} with the guide and ${fmtNum(med('ours', 'lockWaitMaxMs'), 'ms')} with ours (worst run ${fmtNum(stats(res.ours.map((x) => x.lockWaitMaxMs)).max, 'ms')}); the rest of the insert latency is the loaded machine's disk and CPU. `
    + `Ours took ${fmtNum(med('ours', 'migrationMs'), 'ms')} for the whole command (apply ${fmtNum(med('ours', 'applyMs'), 'ms')}, ${fmtNum(med('ours', 'lockRetries'))} lock retries, median) with a longest insert wait of ${fmtNum(med('ours', 'maxMs'), 'ms')} (worst run ${fmtNum(stats(res.ours.map((x) => x.maxMs)).max, 'ms')}) and ${fmtNum(med('ours', 'slow'))} inserts over its ${cfg.slowMs} ms lock timeout: 014 takes \`nchat_messages\` before \`nchat_channels\`, the order every insert takes them in, so no insert is caught in a lock cycle. `
    + (codes.length ? `Errors seen by the writers: ${codes.join(', ')}. ` : 'No insert failed on either side, ')
    + `and every committed insert was found afterwards in ${[...res.guide, ...res.ours].every((x) => x.lost === 0) ? 'every run' : 'NOT every run (see the per-run values)'}.`
  return {table: t, text}
}
