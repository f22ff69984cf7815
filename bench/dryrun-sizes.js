#!/usr/bin/env node
// Dry run and backup at 100k, 1M and 5M messages (issue 11): the guide's manual dry run against ours, side by
// side in one run, the forecast against the actual apply, and backup throughput by format.
//
//   node bench/dryrun-sizes.js                                   # 100k, 1M, 5M; writes docs/benchmarks-dryrun.md
//   node bench/dryrun-sizes.js --sizes 100000,1000000 --out /tmp/d.md
//   node bench/dryrun-sizes.js --runs 3                          # each size 3 times; its row is the median run
//   npm run bench -- --only 8                                    # the same, from bench/run.js
//
// The databases come from bench/template-cache.js (made once by the project's generator, kept as templates).
// Every database this makes is named e2ee_bench_<run>_dry_… and dropped at the end. Needs dist/ built.
import {mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import postgres from 'postgres'

import {cli, conn, GUIDE_SQL_FILE, mustRun, psqlArgs, ROOT, RUN} from './lib/harness.js'
import {ADMIN, CACHE_CHANNELS, CACHE_USERS, cachedTemplate} from './template-cache.js'

const PREFIX = `e2ee_bench_${RUN}_dry`
const log = (l) => process.stderr.write(`[dryrun-sizes ${new Date().toISOString().slice(11, 19)}] ${l}\n`)

async function admin(text) {
  const sql = postgres({...ADMIN, database: 'postgres', max: 1, onnotice: () => {}})
  try {
    return await sql.unsafe(text)
  } finally {
    await sql.end({timeout: 2})
  }
}

const ident = (n) => {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(n)) throw new Error(`unsafe identifier ${n}`)
  return n
}
const drop = (n) => admin(`DROP DATABASE IF EXISTS ${ident(n)} WITH (FORCE)`)
const filesUnder = (d) => {
  try {
    return readdirSync(d, {recursive: true}).filter((f) => statSync(path.join(d, f)).isFile())
  } catch {
    return []
  }
}
const dirBytes = (d) => readdirSync(d).reduce((s, f) => s + statSync(path.join(d, f)).size, 0)
const mb = (bytes) => bytes / 1024 / 1024
const s = (ms) => `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`
const fmtInt = (n) => Math.round(n).toLocaleString('en-US')

/** One size: guide and ours side by side, then the forecast against the real apply, then the backup formats. */
async function oneSize(messages, tmp) {
  const tpl = await cachedTemplate(messages, log)
  const src = `${PREFIX}_${messages}`
  await drop(src)
  await admin(`CREATE DATABASE ${ident(src)} TEMPLATE ${ident(tpl)}`)
  const [{bytes}] = await admin(`select pg_database_size('${src}') as bytes`)
  const dbBytes = Number(bytes)
  const dir = mkdtempSync(path.join(tmp, `${messages}-`))
  const res = {dbBytes, messages}
  try {
    // The guide: plain pg_dump, createdb, psql restore, its SQL, dropdb.
    const plain = path.join(dir, 'backup_pre_v0.4.0.sql')
    const test = `${PREFIX}_${messages}_guide`
    const g0 = performance.now()
    const dump = await mustRun('pg_dump', [...conn, src], {stdoutFile: plain})
    await mustRun('createdb', [...conn, test])
    const restore = await mustRun('psql', psqlArgs(test), {stdinFile: plain})
    if (/ERROR/.test(restore.stderr)) throw new Error(`psql restore reported: ${restore.stderr.trim().split('\n')[0]}`)
    const apply = await mustRun('psql', psqlArgs(test, '-f', GUIDE_SQL_FILE))
    await mustRun('dropdb', [...conn, test])
    res.guide = {applyMs: apply.ms, dumpMs: dump.ms, restoreMs: restore.ms, totalMs: performance.now() - g0}
    res.plainBytes = statSync(plain).size
    rmSync(plain)
    log(`${messages}: guide ${s(res.guide.totalMs)} (pg_dump ${s(dump.ms)}, psql restore ${s(restore.ms)}, SQL ${s(apply.ms)})`)

    // Ours: the dryrun command end to end: no backup (production is only read), its rehearsal dump, removed at the end.
    const project = mkdtempSync(path.join(dir, 'project-'))
    const backups = path.join(project, 'backups')
    const ours = await cli(['db', 'e2ee', 'dryrun', '--yes', '--json', '-d', src, '--backup-dir', backups], project)
    const left = filesUnder(backups)
    if (left.length > 0 || ours.json.backup !== null || !ours.json.rehearsalDump?.removed)
      throw new Error(
        `dryrun left ${left.join(', ') || 'no file'} (backup ${JSON.stringify(ours.json.backup)}, rehearsal dump ${JSON.stringify(ours.json.rehearsalDump)})`,
      )
    res.ours = {
      applyMs: ours.json.applyMs,
      dumpBytes: ours.json.rehearsalDump.bytes,
      dumpMs: ours.json.timings.dump,
      forecastMs: ours.json.forecastMs,
      restoreMs: ours.json.restoreMs,
      totalMs: ours.ms,
    }
    res.leftOut = ours.json.leftOut
    res.samples = ours.json.forecast?.samples ?? []
    log(
      `${messages}: ours ${s(ours.ms)} (rehearsal dump ${s(res.ours.dumpMs)}, ${mb(res.ours.dumpBytes).toFixed(1)} MiB; restore ${s(res.ours.restoreMs)}, apply on the copy ${s(res.ours.applyMs)}, forecast ${s(res.ours.forecastMs)})`,
    )

    // The same command with --full: its own full verified backup (kept), every row restored, as the guide does.
    const full = await cli(['db', 'e2ee', 'dryrun', '--yes', '--json', '--full', '-d', src, '--backup-dir', backups], project)
    if (!full.json.backup?.taken || !statSync(full.json.backup.file).isFile())
      throw new Error(`dryrun --full left no backup (${JSON.stringify(full.json.backup)})`)
    res.full = {backupMs: full.json.timings.backup, forecastMs: full.json.forecastMs, restoreMs: full.json.restoreMs, totalMs: full.ms}
    log(`${messages}: ours --full ${s(full.ms)} (backup ${s(res.full.backupMs)}, restore ${s(res.full.restoreMs)}, forecast ${s(res.full.forecastMs)})`)

    // Backup formats, each against the guide's plain pg_dump.
    res.backups = []
    for (const [label, args, isDir] of [
      ['custom, gzip level 1 (-Fc -Z 1)', ['-Fc', '-Z', '1'], false],
      ['custom, default gzip (-Fc)', ['-Fc'], false],
      ['custom, uncompressed (-Fc -Z 0)', ['-Fc', '-Z', '0'], false],
      ['directory, 2 jobs, gzip 1 (-Fd -j 2 -Z 1)', ['-Fd', '-j', '2', '-Z', '1'], true],
      ['directory, 2 jobs, uncompressed (-Fd -j 2 -Z 0)', ['-Fd', '-j', '2', '-Z', '0'], true],
    ]) {
      const out = path.join(dir, isDir ? 'dump.d' : 'dump.fc')
      const r = await mustRun('pg_dump', [...conn, ...args, '-f', out, src])
      const size = isDir ? dirBytes(out) : statSync(out).size
      rmSync(out, {force: true, recursive: true})
      res.backups.push({bytes: size, label, ms: r.ms})
      log(`${messages}: backup ${label} ${s(r.ms)} ${mb(size).toFixed(0)} MiB`)
    }

    // The actual apply on the database the dry run rehearsed (no backup, no dry run: the apply step alone).
    const migrated = await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-backup', '--skip-dryrun', '-d', src], project)
    res.actualApplyMs = migrated.json.applyMs
    log(`${messages}: actual apply ${s(res.actualApplyMs)} (forecast ${s(res.ours.forecastMs)}, --full forecast ${s(res.full.forecastMs)})`)
    return res
  } finally {
    rmSync(dir, {force: true, recursive: true})
    await drop(`${PREFIX}_${messages}_guide`).catch(() => {})
    await drop(src).catch(() => {})
  }
}

export function dryrunTable(results) {
  const rows = [
    [
      'messages (database)',
      'runs',
      'guide: pg_dump + createdb + psql restore + SQL + dropdb',
      'ours: dryrun (rehearsal dump, slim copy, apply, verify, forecast)',
      'ours/guide',
      'ours/guide, each run',
      'ours: rehearsal dump (size)',
      'ours: restore of the copy',
      'forecast',
      'actual apply',
      'forecast error',
      'forecast error, each run',
      'ours --full (verified backup, every row)',
    ],
  ]
  const pct = (e) => `${e >= 0 ? '+' : ''}${(e * 100).toFixed(0)} %`
  for (const r of results) {
    const err = errorOf(r)
    const runs = r.runs ?? [{error: err, ratio: ratioOf(r)}]
    rows.push([
      `${fmtInt(r.messages)} (${mb(r.dbBytes).toFixed(0)} MiB)`,
      String(runs.length),
      s(r.guide.totalMs),
      s(r.ours.totalMs),
      `${ratioOf(r).toFixed(2)}×`,
      runs.map((x) => `${x.ratio.toFixed(2)}×`).join(', '),
      `${s(r.ours.dumpMs)} (${mb(r.ours.dumpBytes).toFixed(1)} MiB)`,
      s(r.ours.restoreMs),
      s(r.ours.forecastMs),
      s(r.actualApplyMs),
      `${pct(err)} (${r.ours.forecastMs >= r.actualApplyMs ? '+' : '−'}${s(Math.abs(r.ours.forecastMs - r.actualApplyMs))})`,
      runs.map((x) => pct(x.error)).join(', '),
      s(r.full.totalMs),
    ])
  }
  return rows
}

export function backupTable(results) {
  const rows = [['messages', 'method', 'time', 'MB/s of database', 'size', 'vs plain pg_dump (time)']]
  for (const r of results) {
    const plainMbS = mb(r.dbBytes) / (r.guide.dumpMs / 1000)
    rows.push([fmtInt(r.messages), 'guide: plain pg_dump > file.sql', s(r.guide.dumpMs), plainMbS.toFixed(0), `${mb(r.plainBytes).toFixed(0)} MiB`, '1.00×'])
    for (const b of r.backups)
      rows.push([
        fmtInt(r.messages),
        b.label,
        s(b.ms),
        (mb(r.dbBytes) / (b.ms / 1000)).toFixed(0),
        `${mb(b.bytes).toFixed(0)} MiB`,
        `${(b.ms / r.guide.dumpMs).toFixed(2)}×`,
      ])
  }
  return rows
}

const md = (rows) =>
  [`| ${rows[0].join(' | ')} |`, `|${rows[0].map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`, ...rows.slice(1).map((r) => `| ${r.join(' | ')} |`)].join(
    '\n',
  )

function backupChoice(results) {
  const r = results.at(-1)
  const find = (re) => r.backups.find((b) => re.test(b.label))
  const rate = (ms) => (mb(r.dbBytes) / (ms / 1000)).toFixed(0)
  const fc1 = find(/-Fc -Z 1/),
    fc0 = find(/-Fc -Z 0/),
    fd1 = find(/-Fd -j 2 -Z 1/),
    fd0 = find(/-Fd -j 2 -Z 0/)
  return (
    `**The default stays the custom format with light compression** (\`takeBackup\`: \`pg_dump -Fc -Z 1\` with pg_dump 15 and older, \`--compress=zstd:1\` from 16, chosen in docs/benchmarks-compression.md). `
    + `At ${fmtInt(r.messages)} messages the plain dump ran at ${rate(r.guide.dumpMs)} MB/s, \`-Fc -Z 1\` at ${rate(fc1.ms)} MB/s (${mb(fc1.bytes).toFixed(0)} MiB, ${(fc1.bytes / r.plainBytes).toFixed(2)}× the plain file), \`-Fc -Z 0\` at ${rate(fc0.ms)} MB/s (${mb(fc0.bytes).toFixed(0)} MiB). `
    + `The directory format with 2 jobs ran at ${rate(fd1.ms)} MB/s (gzip 1) and ${rate(fd0.ms)} MB/s (uncompressed): on this 2-CPU machine parallel jobs win little, and a directory is not a backup nself can list or restore (\`nself db backup list\`/\`restore\` take single \`.dump\` files, and skip folders), nor one \`pg_restore\` can read from a pipe through \`docker exec\`. `
    + `Uncompressed custom is the fastest single file, at about ${(fc0.bytes / fc1.bytes).toFixed(1)}× the size of gzip 1; the backup is kept on the operator's disk, so the smaller file was kept as the default. The formats of pg_dump 16+ (zstd, lz4) are measured with Debian's client tools 17 and 18 in docs/benchmarks-compression.md. `
    + `\`migrate\` and \`dryrun --full\` take this backup; the standalone \`dryrun\` takes none (production is only read): its rehearsal dump holds the schema and the rows of the tables the copy restores, and is removed when it ends.`
  )
}

export function markdown(results, meta) {
  const lo = results[0]?.leftOut ?? []
  return `# Benchmarks: dry run and backup at 100k, 1M and 5M messages

Generated by \`${meta.command}\` (\`bench/dryrun-sizes.js\`) on ${meta.date}; every figure comes from that one run.
Machine: ${os.availableParallelism()} CPUs, shared and loaded by other test suites (load average at the start ${meta.load}); PostgreSQL ${meta.pg}.
Data: the project's generator (\`scripts/v030-fixture.mjs\`, cached as template databases by \`bench/template-cache.js\`): ${fmtInt(CACHE_USERS)} users, ${fmtInt(CACHE_CHANNELS)} channels, the messages with nChat's generated search column and its GIN index, one reaction per 5 messages, read receipts per member. ${results.map((r) => `${fmtInt(r.messages)}: ${r.runs?.length ?? 1} run(s)`).join(', ')}; where a size ran more than once its row is the run with the median ours/guide ratio, and the ratio and forecast error of every run stand beside it${meta.note ? `; ${meta.note}` : ''}.

## Dry run

"guide" is the guide's manual method timed end to end: \`pg_dump DB > file.sql\`, \`createdb\`, \`psql < file.sql\`, \`psql -f\` its SQL (\`test/fixtures/guide_014_by_hand.sql\`), \`dropdb\`. "ours" is \`node bin/run.js db e2ee dryrun --yes --json\` end to end (node start-up, preflight, the rehearsal dump, the copy, apply of 013-016, verification, the forecast's sample, drop). It takes no backup, since production is only read: its rehearsal dump (\`pg_dump -Fc\` of the whole schema with \`--exclude-table-data\` for every table whose rows the copy leaves out, in the same exported snapshot and read back like a backup) is written to the backup folder's \`.nself-e2ee/\`, restored into the copy and deleted; the benchmark checks that no file is left. "forecast" is its \`forecastMs\`; "actual apply" is \`migrate --skip-backup --skip-dryrun\`'s \`applyMs\` on the same database right after. The last column is \`dryrun --full\` end to end: its own full verified backup (kept), every row restored, as the guide does.

${md(dryrunTable(results))}

What the copy left out (the same at every size): ${lo.map((l) => `\`${l.table}\``).join(', ')}; why each cannot change the outcome is in the README ("What the dry run restores") and in each report's \`leftOut[].why\`. The forecast's samples: ${results.map((r) => `${fmtInt(r.messages)}: ${r.samples.map((x) => `${x.table} ${fmtInt(x.sampleRows)} rows (${x.samplePages}/${x.productionPages} pages, ×${x.factor.toFixed(1)})`).join(', ')}`).join('; ')}.

## Backup

Throughput is the database's size (\`pg_database_size\`) divided by the dump's time.

${md(backupTable(results))}

${backupChoice(results)}
`
}

const ratioOf = (r) => r.ours.totalMs / r.guide.totalMs
const errorOf = (r) => (r.ours.forecastMs - r.actualApplyMs) / r.actualApplyMs

/** `runs` runs per size; the size's row is its median run by ours/guide, and every run's ratio and error is kept. */
export async function dryrunSizes(sizes, runs = 1) {
  const tmp = mkdtempSync(path.join(os.tmpdir(), `e2ee-dry-${RUN}-`))
  const results = []
  try {
    for (const m of sizes) {
      const each = []
      for (let i = 0; i < runs; i++) each.push(await oneSize(m, tmp))
      const median = [...each].sort((a, b) => ratioOf(a) - ratioOf(b))[Math.floor((each.length - 1) / 2)]
      results.push({...median, runs: each.map((r) => ({error: errorOf(r), ratio: ratioOf(r)}))})
    }
  } finally {
    rmSync(tmp, {force: true, recursive: true})
  }
  return results
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const argv = process.argv.slice(2)
  const opt = (name) => {
    const i = argv.findIndex((a) => a === name || a.startsWith(`${name}=`))
    if (i === -1) return undefined
    return argv[i].includes('=') ? argv[i].slice(argv[i].indexOf('=') + 1) : argv[i + 1]
  }
  const sizes = (opt('--sizes') ?? '100000,1000000,5000000').split(',').map((x) => Number(x.replaceAll('_', '')))
  const out = opt('--out') ?? path.join(ROOT, 'docs', 'benchmarks-dryrun.md')
  const [{v}] = await admin(`select current_setting('server_version') as v`)
  const load = opt('--render') ? 'not recorded' : os.loadavg()[0].toFixed(1)
  // --render FILE: write the report from results saved by --merge, measuring nothing.
  const render = opt('--render')
  const runs = Number(opt('--runs') ?? 1)
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a whole number of at least 1, not ${opt('--runs')}`)
  let results = render ? JSON.parse(readFileSync(render, 'utf8')) : await dryrunSizes(sizes, runs)
  // --merge FILE: keep the sizes measured by an earlier run (saved in FILE) that this run did not measure.
  const mergeFile = opt('--merge')
  if (mergeFile && !render) {
    let earlier = []
    try {
      earlier = JSON.parse(readFileSync(mergeFile, 'utf8'))
    } catch {}
    results = [...earlier.filter((e) => !sizes.includes(e.messages)), ...results].sort((a, b) => a.messages - b.messages)
    writeFileSync(mergeFile, JSON.stringify(results, null, 1))
  }
  const text = markdown(results, {
    command: render
      ? 'node bench/dryrun-sizes.js --sizes 100000,1000000,5000000 --merge FILE'
      : `node bench/dryrun-sizes.js${argv.length ? ` ${argv.join(' ')}` : ''}`,
    date: `${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC`,
    load,
    note: opt('--note'),
    pg: v,
  })
  writeFileSync(out, text)
  const show = (rows) => rows.map((r) => r.join(' | ')).join('\n')
  process.stdout.write(`${show(dryrunTable(results))}\n\n${show(backupTable(results))}\n\nwritten to ${out}\n`)
}
