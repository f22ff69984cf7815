// Scenario 4: dry-run restore (D9)

import path from 'node:path'

import {cli, conn, dropDb, firstLine, GUIDE_SQL_FILE, log, mustRun, PREFIX, psqlArgs, run, scratchDir, sidesOf} from '../lib/harness.js'
import {cellOf, fmtNum, sideBySide, table} from '../lib/stats.js'
import {dumps, oursBackup, sourceDb} from './3-backup.js'

export const title = '4. Dry run: restoring the backup into a test database (D9)'

export const what = () =>
  `Guide: \`CREATE DATABASE test\` then \`psql -d test < backup_pre_v0.4.0.sql\` (timed together as the restore), then \`psql -d test -f\` its SQL, then DROP. `
  + `Ours: \`node bin/run.js db e2ee dryrun --yes --json --local -d DB --from-backup FILE\`; the restore time is \`restoreMs\` from its JSON.`

/** What our dry run's copy left out (from its JSON), for the report's text. */
const copy = {leftOut: undefined}

async function ensureDumps(cfg) {
  const db = await sourceDb(cfg)
  const dir = scratchDir('s4_dumps')
  if (!dumps.plainDump) {
    dumps.plainDump = path.join(dir, 'backup_pre_v0.4.0.sql')
    await mustRun('pg_dump', [...conn, db], {stdoutFile: dumps.plainDump})
  }
  if (!dumps.customDump) {
    const b = await oursBackup(db, path.join(dir, 'backups'))
    dumps.customDump = b.file
    dumps.compression = b.compression
  }
  return db
}

export async function measure(cfg) {
  const db = await ensureDumps(cfg)
  const results = {guide: [], ours: [], full: []}
  for (let r = 1; r <= cfg.runs; r++) {
    for (const way of sidesOf(r, ['guide', 'ours', 'full'])) {
      if (way === 'guide') {
        const test = `${PREFIX}_s4_test_${r}`
        try {
          const t0 = performance.now()
          await mustRun('psql', psqlArgs('postgres', '-c', `CREATE DATABASE ${test}`))
          const rest = await run('psql', psqlArgs(test), {stdinFile: dumps.plainDump})
          const restoreMs = performance.now() - t0
          if (/ERROR/.test(rest.stderr)) throw new Error(`psql restore reported: ${firstLine(rest.stderr)}`)
          const apply = await run('psql', psqlArgs(test, '-f', GUIDE_SQL_FILE))
          await mustRun('psql', psqlArgs('postgres', '-c', `DROP DATABASE ${test}`))
          results.guide.push({restoreMs, totalMs: performance.now() - t0, applyMs: apply.ms})
        } finally {
          await dropDb(test)
        }
      } else if (way === 'ours') {
        const res = await cli(
          ['db', 'e2ee', 'dryrun', '--yes', '--json', '-d', db, '--from-backup', dumps.customDump, '--backup-dir', path.dirname(dumps.customDump)],
          scratchDir(`s4_${r}`),
        )
        results.ours.push({restoreMs: res.json.restoreMs, totalMs: res.ms, applyMs: res.json.forecastMs})
        copy.leftOut = res.json.leftOut
      } else {
        // Reference: the same archive restored whole with pg_restore -j 2, as our rollback does.
        const name = `${PREFIX}_s4_full_${r}`
        try {
          const t0 = performance.now()
          await mustRun('psql', psqlArgs('postgres', '-c', `CREATE DATABASE ${name}`))
          await mustRun('pg_restore', [...conn, '-d', name, '-j', '2', '--no-owner', dumps.customDump])
          results.full.push({restoreMs: performance.now() - t0})
        } finally {
          await dropDb(name)
        }
      }
    }
    log(
      `s4 run ${r}: guide restore ${fmtNum(results.guide.at(-1).restoreMs, 'ms')}, ours restore ${fmtNum(results.ours.at(-1).restoreMs, 'ms')} (dryrun ${fmtNum(results.ours.at(-1).totalMs, 'ms')}), full pg_restore -j2 ${fmtNum(results.full.at(-1).restoreMs, 'ms')}`,
    )
  }
  return results
}

export function report(_cfg, res) {
  const rows = [
    ['restore into a new database', ...sideBySide(res, 'restoreMs', 'ms'), cellOf(res.full, 'restoreMs', 'ms')],
    ['apply on the copy', ...sideBySide(res, 'applyMs', 'ms'), ''],
    ['whole dry run (wall)', ...sideBySide(res, 'totalMs', 'ms'), ''],
  ]
  const leftOut = copy.leftOut ?? []
  const t = table(
    [
      'step',
      'guide (CREATE DATABASE + psql < plain.sql)',
      'ours (dryrun --from-backup: restoreMs)',
      'ours/guide',
      'reference: full pg_restore -j 2 of our archive',
    ],
    rows,
  )
  const text =
    `Ours restores the custom-format archive with \`pg_restore -j\`, and only the data the migration reads or alters`
    + (leftOut.length
      ? ` (left out: ${leftOut.map((l) => `${l.table}${l.rows == null ? '' : ` ${fmtNum(l.rows)} rows`}`).join(', ')}; their definitions are restored)`
      : '')
    + `; the reference column restores the whole archive for an even comparison. `
    + `"Apply" is the guide's 014 SQL against our 013-016 (\`forecastMs\`, with the lock observation the dry run reports). "Whole dry run" is, for the guide, create + restore + psql of its SQL + drop; for ours, the \`dryrun\` command end to end (node start-up, preflight, restore, apply 013-016, verification, drop), with an existing backup (\`--from-backup\`, the one scenario 3 took).`
  return {table: t, text}
}
