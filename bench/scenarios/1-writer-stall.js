// Scenario 1: writer stall during the migration with a long read open (D5/D10)

import {setTimeout as sleep} from 'node:timers/promises'

import {applyMigration, log, onClones, pg, scratchDir, template} from '../lib/harness.js'
import {fmtNum, median, percentile, sideBySide, stats, table} from '../lib/stats.js'

export const title = '1. Writers during the migration, with a long read open (D5, D10)'

export const what = (cfg) =>
  `A v0.3.0 database with ${fmtNum(cfg.messages)} messages; an open-loop writer due to INSERT into \`nchat_messages\` every ${cfg.writerEveryMs} ms (8 connections; latency counted from when each write was due); `
  + `0.5 s after the writer starts, a read transaction takes ACCESS SHARE on \`nchat_messages\` and holds it ${fmtNum(cfg.readMs / 1000)} s; 0.1 s later the migration starts. `
  + `Guide: \`psql -d DB < guide_014_by_hand.sql\` (no ON_ERROR_STOP, no lock_timeout). Ours: \`node bin/run.js db e2ee migrate --yes --json --local --skip-backup --skip-dryrun -d DB\`. `
  + `Writer latencies are taken over the whole window (0.5 s before the read until 0.5 s after both the read and the migration ended).`

/**
 * An open-loop writer, as a chat backend under steady traffic: one INSERT into nchat_messages is due every
 * `everyMs`, whether or not the previous ones finished (a pool of 8 connections; requests beyond that queue
 * in the client, as in an app). Each write's latency counts from when it was due, so a stall shows in every
 * write that arrived during it, not just the one that hit it (no coordinated omission).
 */
function startWriter(database, everyMs) {
  const sql = pg(database, {max: 8})
  const latencies = []
  let failures = 0
  let running = true
  const inflight = new Set()
  const done = (async () => {
    const [{channel, userId}] =
      await sql`select (select id from nchat_channels order by id limit 1) as channel, (select id from nchat_users order by id limit 1) as "userId"`
    const start = performance.now()
    let k = 0
    while (running) {
      const due = start + k * everyMs
      const now = performance.now()
      if (now < due) {
        await sleep(due - now)
        continue
      }
      k++
      const p = sql`insert into nchat_messages (channel_id, user_id, content) values (${channel}, ${userId}, 'live write')`.then(
        () => {
          latencies.push(performance.now() - due)
        },
        () => {
          failures++
          latencies.push(performance.now() - due)
        },
      )
      inflight.add(p)
      p.finally(() => inflight.delete(p))
    }
    await Promise.all([...inflight])
  })()
  return {
    async stop() {
      running = false
      await done
      await sql.end({timeout: 2})
      return {latencies, failures}
    },
  }
}

/** Holds ACCESS SHARE on nchat_messages in an open transaction for `ms` (a long report query). */
async function holdLongRead(database, ms) {
  const sql = pg(database)
  const c = await sql.reserve()
  await c.unsafe('begin')
  await c.unsafe('select count(*) from nchat_messages')
  const done = (async () => {
    await sleep(ms)
    await c.unsafe('commit')
    c.release()
    await sql.end({timeout: 2})
  })()
  return {done}
}

export async function measure(cfg) {
  return onClones(cfg, await template(cfg), 's1', async (db, way, r) => {
    const writer = startWriter(db, cfg.writerEveryMs)
    await sleep(500)
    const reader = await holdLongRead(db, cfg.readMs)
    await sleep(100)
    const t0 = performance.now()
    const res = await applyMigration(way, db, scratchDir(`s1_${r}`))
    const migrationMs = performance.now() - t0
    await reader.done
    await sleep(500)
    const w = await writer.stop()
    const lat = w.latencies
    const row = {
      writes: lat.length,
      failures: w.failures,
      maxMs: Math.max(...lat),
      p99Ms: percentile(lat, 99),
      p50Ms: percentile(lat, 50),
      slow: lat.filter((x) => x > cfg.slowMs).length,
      migrationMs,
      applyMs: res.json?.applyMs,
      lockRetries: res.json?.lockRetries,
    }
    log(
      `s1 run ${r} ${way}: migration ${fmtNum(migrationMs, 'ms')}, writes ${row.writes}, max ${fmtNum(row.maxMs, 'ms')}, p99 ${fmtNum(row.p99Ms, 'ms')}, >${cfg.slowMs} ms: ${row.slow}, failed ${row.failures}`,
    )
    return row
  })
}

export function report(cfg, res) {
  const rows = [
    ['longest write (max latency)', ...sideBySide(res, 'maxMs', 'ms')],
    ['p99 write latency', ...sideBySide(res, 'p99Ms', 'ms')],
    ['median write latency', ...sideBySide(res, 'p50Ms', 'ms')],
    [`writes that waited > ${cfg.slowMs} ms`, ...sideBySide(res, 'slow')],
    ['writes issued (during the whole window)', ...sideBySide(res, 'writes')],
    ['failed writes', ...sideBySide(res, 'failures')],
    ['migration wall time (ours: whole command)', ...sideBySide(res, 'migrationMs', 'ms')],
  ]
  const t = table(['metric', 'guide (psql < guide SQL)', 'ours (migrate --skip-backup --skip-dryrun)', 'ours/guide'], rows)
  const ours = (k) => res.ours.map((x) => x[k])
  const guide = (k) => res.guide.map((x) => x[k])
  const text =
    `With a ${fmtNum(cfg.readMs / 1000)} s read open, the guide's plain \`ALTER TABLE\` queued behind it and every write behind the ALTER: `
    + `the longest write took ${fmtNum(median(guide('maxMs')), 'ms')} (median of runs) and ${fmtNum(median(guide('slow')))} writes waited more than ${cfg.slowMs} ms. `
    + `Ours waits for long transactions before it asks for a lock, then takes locks with its default 200 ms lock_timeout and builds the indexes CONCURRENTLY: `
    + `its apply step took ${fmtNum(median(ours('applyMs')), 'ms')} (the wait for the reader included; ${fmtNum(median(ours('lockRetries')))} lock retries, median), the longest write ${fmtNum(median(ours('maxMs')), 'ms')} (worst run ${fmtNum(stats(ours('maxMs')).max, 'ms')}), and ${fmtNum(median(ours('slow')))} writes waited over ${cfg.slowMs} ms. `
    + `Ours applies 013-016 and runs preflight, verify and vacuum around the apply; the guide applies its 014 SQL only.`
  return {table: t, text}
}
