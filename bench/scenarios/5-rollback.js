// Scenario 5: rollback downtime (D7)

import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {cli, conn, dropDb, firstLine, GUIDE_SQL_FILE, log, mustRun, onClones, pg, psqlArgs, run, scratchDir, template, withDb} from '../lib/harness.js'
import {cellOf, fmtNum, median, sideBySide, table} from '../lib/stats.js'

export const title = '5. Rollback downtime (D7)'

export const what = (cfg) =>
  `A migrated ${fmtNum(cfg.messages)}-message database is rolled back to its pre-migration backup while an outside client opens a new connection every ${cfg.probeEveryMs} ms and checks that each v0.3.0 table has rows (a failed connection, an error, a missing or empty table count as down; a blocked probe delays the next). `
  + `Guide (option 1): \`DROP DATABASE\` (WITH (FORCE), as the probe keeps connecting), \`CREATE DATABASE\`, \`psql -d DB < backup.sql\`; its own downtime is that whole sequence. `
  + `Ours: \`node bin/run.js db e2ee rollback --yes --json --local -d DB --backup-dir DIR\` after \`migrate\` took the backup; its own downtime is \`swapWindowMs\` (new connections wait). The setup (backup, migration) is not timed.`

/**
 * An outside client: every `everyMs` it opens a new connection and checks that the app's data is there
 * (each v0.3.0 table with data has rows). A probe fails when it cannot connect, errors, or finds the tables missing or
 * empty; a probe that hangs delays the next one. The outage is the longest interval between two successful
 * probes (about everyMs plus a few ms when nothing happens).
 */
function startProbe(database, everyMs) {
  const probes = []
  let running = true
  const done = (async () => {
    while (running) {
      const t = performance.now()
      let ok = false
      const sql = pg(database, {connectTimeout: 5})
      try {
        const [r] = await sql`select exists(select 1 from nchat_users) and exists(select 1 from nchat_channels) and exists(select 1 from nchat_channel_members)
                                  and exists(select 1 from nchat_messages) and exists(select 1 from nchat_reactions) and exists(select 1 from nchat_read_receipts) as ok`
        ok = r.ok === true
      } catch {
        ok = false
      }
      await sql.end({timeout: 1}).catch(() => {})
      const end = performance.now()
      probes.push({start: t, end, ok})
      const wait = t + everyMs - performance.now()
      if (wait > 0) await sleep(wait)
    }
  })()
  return {
    async stop() {
      running = false
      await done
      const okEnds = probes.filter((p) => p.ok).map((p) => p.end)
      const gaps = okEnds.slice(1).map((e, i) => e - okEnds[i])
      return {probes: probes.length, failed: probes.filter((p) => !p.ok).length, longestGapMs: Math.max(0, ...gaps), typicalGapMs: median(gaps)}
    },
  }
}

export async function measure(cfg) {
  const tpl = await template(cfg)
  const [{n: expected}] = await withDb(tpl, (sql) => sql`select count(*)::int as n from nchat_messages`)
  return onClones(cfg, tpl, 's5', async (db, way, r) => {
    const dir = scratchDir(`s5_${way}_${r}`)
    let row
    if (way === 'guide') {
      // Untimed setup: the guide's backup (plain SQL) and its migration.
      const file = path.join(dir, 'backup_pre_v0.4.0.sql')
      await mustRun('pg_dump', [...conn, db], {stdoutFile: file})
      await mustRun('psql', psqlArgs(db, '-v', 'ON_ERROR_STOP=1', '-f', GUIDE_SQL_FILE))
      const probe = startProbe(db, cfg.probeEveryMs)
      await sleep(500)
      // Rollback option 1: DROP, CREATE, psql restore. WITH (FORCE) because the probe keeps connecting
      // (the guide stops the whole app first, which makes its real downtime longer still).
      const t0 = performance.now()
      await mustRun('psql', psqlArgs('postgres', '-c', `DROP DATABASE ${db} WITH (FORCE)`))
      await mustRun('psql', psqlArgs('postgres', '-c', `CREATE DATABASE ${db}`))
      const rest = await run('psql', psqlArgs(db), {stdinFile: file})
      const downtimeMs = performance.now() - t0
      await sleep(500)
      const p = await probe.stop()
      if (/ERROR/.test(rest.stderr)) throw new Error(`psql restore reported: ${firstLine(rest.stderr)}`)
      row = {internalMs: downtimeMs, totalMs: downtimeMs, ...p}
    } else {
      // Untimed setup: our migrate, which takes the pre-migration backup the rollback restores.
      await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-dryrun', '-d', db, '--backup-dir', dir], dir)
      const probe = startProbe(db, cfg.probeEveryMs)
      await sleep(500)
      const res = await cli(['db', 'e2ee', 'rollback', '--yes', '--json', '-d', db, '--backup-dir', dir], dir)
      await sleep(500)
      const p = await probe.stop()
      if (res.json.kept?.database) await dropDb(res.json.kept.database)
      row = {internalMs: res.json.swapWindowMs, totalMs: res.ms, restoreMs: res.json.timings?.restore, ...p}
    }
    // The database is back at v0.3.0 with all its messages.
    const [{n, v}] = await withDb(
      db,
      (sql) => sql`select (select count(*)::int from nchat_messages) as n, (select max(version)::int from schema_migrations) as v`,
    )
    row.intact = n === expected && v === 12
    log(
      `s5 run ${r} ${way}: ${way === 'guide' ? 'drop+create+restore' : 'swap window'} ${fmtNum(row.internalMs, 'ms')}, probe longest gap ${fmtNum(row.longestGapMs, 'ms')} (${row.failed}/${row.probes} probes failed), rollback wall ${fmtNum(row.totalMs, 'ms')}, intact ${row.intact}`,
    )
    return row
  })
}

export function report(cfg, res) {
  const g = res.guide,
    o = res.ours
  const col = (k, unit) => sideBySide(res, k, unit)
  const med = (rows, k) => fmtNum(median(rows.map((x) => x[k])), k === 'failed' ? '' : 'ms')
  const rows = [
    ["downtime by the method's own clock", ...col('internalMs', 'ms')],
    [`longest gap between successful probes (every ${cfg.probeEveryMs} ms)`, ...col('longestGapMs', 'ms')],
    ['typical gap between successful probes (median)', ...col('typicalGapMs', 'ms')],
    ['failed probes', ...col('failed')],
    ['rollback wall time (database serving meanwhile for ours)', ...col('totalMs', 'ms')],
    ['  of which restore into the new database', '—', cellOf(o, 'restoreMs', 'ms'), ''],
  ]
  const intact = [...g, ...o].every((x) => x.intact)
  const t = table(['metric', 'guide (DROP + CREATE + psql restore)', 'ours (rollback: restore beside, swap)', 'ours/guide'], rows)
  const text =
    `The guide's option 1 leaves no usable database from the DROP until psql has finished: ${med(g, 'internalMs')} (median), and a failed restore would leave none at all. `
    + `The outside probe saw the guide's data again after ${med(g, 'longestGapMs')}: psql commits each table's COPY as it goes, so the rows are readable while the restore is still building the primary keys, indexes and foreign keys (the probe counts that tail as up; the guide keeps the app stopped throughout anyway). `
    + `Ours restores into a new database while the live one keeps serving, then swaps names in one transaction: new connections waited ${med(o, 'internalMs')} by its own clock, ${med(o, 'failed')} probe(s) failed (median) and the outside probe's longest gap was ${med(o, 'longestGapMs')} (typical gap ${med(o, 'typicalGapMs')}, the load of the restore running beside it included). `
    + (intact
      ? 'After every rollback the database was back at migration 12 with all its messages.'
      : 'WARNING: after at least one rollback the database was not back at migration 12 with all its messages (see the log).')
  return {table: t, text}
}
