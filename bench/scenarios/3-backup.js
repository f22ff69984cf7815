// Scenario 3: backup

import {rmSync, statSync} from 'node:fs'
import path from 'node:path'

import {takeBackup} from '../../dist/steps/backup.js'
import {TOUCHED_TABLES} from '../../dist/nchat/tables.js'
import {resolveTarget} from '../../dist/connection/target.js'
import {PgTools} from '../../dist/connection/tools.js'
import {connect as pluginConnect} from '../../dist/connection/connect.js'

import {ADMIN, cloneDb, conn, log, mustRun, PREFIX, scratchDir, sidesOf, template} from '../lib/harness.js'
import {cellOf, fmtNum, median, sideBySide, table} from '../lib/stats.js'

export const title = '3. Backup'

export const what = (cfg) =>
  `The ${fmtNum(cfg.messages)}-message database. Guide: \`pg_dump DB > backup_pre_v0.4.0.sql\` (plain SQL). Ours: \`takeBackup\` from \`dist/steps/backup.js\`, what \`migrate\` runs: \`pg_dump -Fc\` with light compression inside an exported snapshot, row counts in that snapshot, TOC read back, sha256 and manifest.`

/** The database scenarios 3 and 4 back up (a clone of the template) and the last dumps taken of it, which scenario 4 restores. */
export const dumps = {srcDb: '', plainDump: '', customDump: '', compression: undefined}

export async function sourceDb(cfg) {
  if (dumps.srcDb) return dumps.srcDb
  dumps.srcDb = await cloneDb(await template(cfg), `${PREFIX}_src`)
  return dumps.srcDb
}

function target(db, backupDir) {
  const projectDir = scratchDir('project')
  return resolveTarget({backupDir, database: db, host: ADMIN.host, local: true, port: ADMIN.port, projectDir, user: ADMIN.user}, {})
}

export async function oursBackup(db, dir) {
  const t = target(db, dir)
  const tools = await PgTools.create(t)
  const sql = pluginConnect(t.conn, {max: 2})
  try {
    const t0 = performance.now()
    const info = await takeBackup({dir, ledgerVersion: 12, purpose: 'pre-migration', schema: 'public', sql, tables: TOUCHED_TABLES, target: t, tools})
    return {ms: performance.now() - t0, bytes: info.bytes, file: info.file, compression: info.manifest.compression}
  } finally {
    await sql.end({timeout: 2})
  }
}

export async function measure(cfg) {
  const db = await sourceDb(cfg)
  const results = {guide: [], ours: [], raw: []}
  for (let r = 1; r <= cfg.runs; r++) {
    const dir = scratchDir(`s3_${r}`)
    for (const way of sidesOf(r, ['guide', 'ours', 'raw'])) {
      if (way === 'guide') {
        const file = path.join(dir, 'backup_pre_v0.4.0.sql')
        const res = await mustRun('pg_dump', [...conn, db], {stdoutFile: file})
        results.guide.push({ms: res.ms, bytes: statSync(file).size})
        dumps.plainDump = file
      } else if (way === 'ours') {
        const b = await oursBackup(db, path.join(dir, 'backups'))
        results.ours.push({ms: b.ms, bytes: b.bytes})
        dumps.customDump = b.file
        dumps.compression = b.compression
      } else {
        const file = path.join(dir, 'raw.dump')
        const res = await mustRun('pg_dump', [...conn, '-Fc', '-Z', '1', '-f', file, db])
        results.raw.push({ms: res.ms, bytes: statSync(file).size})
      }
    }
    const last = (k) => results[k].at(-1)
    log(
      `s3 run ${r}: guide ${fmtNum(last('guide').ms, 'ms')} ${fmtNum(last('guide').bytes, 'B')}; ours ${fmtNum(last('ours').ms, 'ms')} ${fmtNum(last('ours').bytes, 'B')}; raw -Fc -Z1 ${fmtNum(last('raw').ms, 'ms')}`,
    )
    // Keep the last run's files for scenario 4; remove the others.
    if (r < cfg.runs) rmSync(dir, {force: true, recursive: true})
  }
  return results
}

export function report(_cfg, res) {
  const rows = [
    ['time', ...sideBySide(res, 'ms', 'ms'), cellOf(res.raw, 'ms', 'ms')],
    ['size', ...sideBySide(res, 'bytes', 'B'), cellOf(res.raw, 'bytes', 'B')],
  ]
  const t = table(
    [
      'metric',
      'guide (pg_dump > file.sql)',
      `ours (takeBackup: pg_dump -Fc ${dumps.compression ?? ''} + checks)`,
      'ours/guide',
      'reference: bare pg_dump -Fc -Z 1',
    ],
    rows,
  )
  const text =
    `Ours writes a compressed custom-format archive (${fmtNum(median(res.ours.map((x) => x.bytes)), 'B')} against ${fmtNum(median(res.guide.map((x) => x.bytes)), 'B')} of plain SQL) that pg_restore can load in parallel and selectively; `
    + `its time includes the row counts taken in the dump's snapshot, the read-back of the archive's table of contents and the sha256 for the manifest (the bare \`pg_dump -Fc -Z 1\` column shows the dump alone).`
  return {table: t, text}
}
