#!/usr/bin/env node
// Benchmarks: OUR way (this plugin) vs THE GUIDE'S manual way, measured in the same run on the same server.
//
//   npm run bench                      # full run (200k messages, 5 runs a scenario, ~5 min), writes docs/benchmarks.md
//   npm run bench -- --quick           # small sizes, 1 run, prints the tables only (no file written)
//   npm run bench -- --messages 500000 --runs 5 --out /tmp/b.md
//   npm run bench -- --only 2,5        # some scenarios only (no file written unless --out)
//   npm run bench -- --only 8          # dry run and backup at 100k/1M/5M (bench/dryrun-sizes.js; also alone)
//   npm run bench -- --only 7 --cleanup-rows 1000000 --runs 1 --messages 20000 --out docs/benchmarks-cleanup.md
//
// Needs the real PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and psql/pg_dump/pg_restore on PATH, and
// dist/ built (npm run bench builds it). Every database it makes is named e2ee_bench_<run id>_… and dropped at
// the end (also on Ctrl+C). Plain Node ESM: imports the built plugin from dist/ and postgres from node_modules.
//
// This file reads the options, runs the chosen scenarios and writes the report. Each scenario is a module of
// bench/scenarios/; what they share is in bench/lib/ (harness.js: names, databases, processes, the template;
// stats.js: medians, ratios and the markdown tables).

import {execFileSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {fileURLToPath} from 'node:url'

import {ADMIN, cleanupAll, ctx, log, query, ROOT, RUN} from './lib/harness.js'
import {fmtNum, table} from './lib/stats.js'
import * as s1 from './scenarios/1-writer-stall.js'
import * as s2 from './scenarios/2-prekeys.js'
import * as s3 from './scenarios/3-backup.js'
import * as s4 from './scenarios/4-dryrun-restore.js'
import * as s5 from './scenarios/5-rollback.js'
import * as s6 from './scenarios/6-busy-writers.js'
import * as s7 from './scenarios/7-cleanup.js'
import * as s8 from './scenarios/8-dryrun-sizes.js'

// Each scenario (bench/scenarios/N-*.js) exports its title, what(cfg) it measures, measure(cfg) → the runs' raw
// values ({guide: [...], ours: [...]} or per size), and report(cfg, raw) → its table and text. Numbered as in the report.
const SCENARIOS = [s1, s2, s3, s4, s5, s6, s7, s8]

// ------------------------------------------------------------------------------------------------------------
// Options

function parseArgs(argv) {
  const o = {quick: false, messages: undefined, runs: undefined, out: undefined, only: undefined, devices: undefined, readMs: undefined, cleanupRows: undefined}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const val = () => {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i]
      if (v === undefined) throw new Error(`${a} needs a value`)
      return v
    }
    const int = (v) => {
      const n = Number(v.replaceAll('_', ''))
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a}: not a positive integer: ${v}`)
      return n
    }
    if (a === '--quick') o.quick = true
    else if (a.startsWith('--messages')) o.messages = int(val())
    else if (a.startsWith('--runs')) o.runs = int(val())
    else if (a.startsWith('--devices')) o.devices = val().split(',').map(int)
    else if (a.startsWith('--read-ms')) o.readMs = int(val())
    else if (a.startsWith('--cleanup-rows')) o.cleanupRows = int(val())
    else if (a.startsWith('--out')) o.out = val()
    else if (a.startsWith('--only')) o.only = val().split(',').map(int)
    else if (a === '--help' || a === '-h') {
      // The usage is this file's lines 2-8.
      const usage = readFileSync(fileURLToPath(import.meta.url), 'utf8')
        .split('\n')
        .slice(1, 8)
      process.stdout.write(`${usage.map((l) => l.replace(/^\/\/ ?/, '')).join('\n')}\n`)
      process.exit(0)
    } else throw new Error(`unknown option ${a} (see --help)`)
  }
  const quick = o.quick
  const cfg = {
    quick,
    messages: o.messages ?? (quick ? 20_000 : 200_000),
    runs: o.runs ?? (quick ? 1 : 5),
    devices: o.devices ?? (quick ? [200, 2_000] : [2_000, 20_000]),
    readMs: o.readMs ?? (quick ? 3_000 : 5_000),
    only: o.only ?? [1, 2, 3, 4, 5, 6, 7, 8],
    // Scenario 7: audit rows and one-time prekeys each (60 % and 40 % of them old enough to delete).
    cleanupRows: o.cleanupRows ?? (quick ? 100_000 : 1_000_000),
    // A full run writes docs/benchmarks.md; --quick and --only print only, unless --out says where.
    out: o.out ?? (quick || o.only ? undefined : path.join(ROOT, 'docs', 'benchmarks.md')),
    users: 2_000,
    channels: 200,
    writerEveryMs: 10,
    probeEveryMs: 20,
    slowMs: 200,
  }
  cfg.argv = argv
  return cfg
}

// ------------------------------------------------------------------------------------------------------------
// Report

function machine() {
  const sh = (cmd, args) => {
    try {
      return execFileSync(cmd, args, {encoding: 'utf8'}).trim()
    } catch {
      return 'unknown'
    }
  }
  return {
    nproc: sh('nproc', []),
    cpu: os.cpus()[0]?.model?.trim() ?? 'unknown',
    memory: fmtNum(os.totalmem(), 'B'),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    pgDump: sh('pg_dump', ['--version']),
  }
}

function command(cfg) {
  return `npm run bench${cfg.argv.length ? ` -- ${cfg.argv.join(' ')}` : ''}`
}

function markdown(cfg, meta, sections) {
  const lines = []
  lines.push("# Benchmarks: `nself db e2ee` vs the guide's manual method", '')
  lines.push('Generated by `bench/run.js`; every number below comes from one run of it (nothing is typed in by hand).')
  lines.push('The machine is small and shared, so read the medians and the ratios, not single timings; min–max in parentheses.', '')
  lines.push('## Run', '')
  lines.push(
    table(
      ['', ''],
      [
        ['date', meta.date],
        ['command', `\`${command(cfg)}\` (in the repository root; builds dist/ first)`],
        ['machine', `${meta.machine.nproc} CPUs (${meta.machine.cpu}), ${meta.machine.memory} RAM, ${meta.machine.kernel}`],
        ['PostgreSQL', `${meta.pgVersion} on ${ADMIN.host}:${ADMIN.port}; ${meta.machine.pgDump}`],
        ['Node', meta.machine.node],
        [
          'data',
          `v0.3.0 database: ${fmtNum(cfg.users)} users, ${fmtNum(cfg.channels)} channels, ${fmtNum(cfg.messages)} messages, ${fmtNum(cfg.messages / 5)} reactions (${meta.templateSize ? fmtNum(meta.templateSize, 'B') : 'n/a'} on disk)`,
        ],
        ['runs', `${cfg.runs} per scenario and side, guide and ours alternating which goes first`],
        ['total time', fmtNum(meta.totalMs, 'ms')],
      ],
      {left: true},
    ),
    '',
  )
  lines.push(
    '"guide" is the manual method of nChat\'s v0.4.0 migration guide, with the guide\'s own SQL (`test/fixtures/guide_014_by_hand.sql`: its tables, materialized view, refresh triggers, plain FK and plain indexes) applied with plain `psql`. "ours" is this plugin (`node bin/run.js db e2ee …`, or its library from `dist/`), applying migrations 013-016.',
    '',
  )
  for (const s of sections) {
    lines.push(`## ${s.title}`, '')
    lines.push(s.what, '')
    lines.push(s.table, '')
    lines.push(s.text, '')
  }
  if (meta.skipped.length) lines.push('## Not measured in this run', '', ...meta.skipped.map((x) => `- ${x}`), '')
  lines.push(
    '## Limits',
    '',
    '- Both sides run pg_dump, pg_restore and psql on this machine against a local server; the `docker exec` path of nself (and its pipe through the container) is not measured: there is no docker engine here.',
    '- The guide stops the app (`nself stop`) for its rollback; that stop and start are not counted in its downtime, so its real downtime is longer than shown.',
    "- Scenario 2 times one upload at a time; the guide's refresh also holds an EXCLUSIVE lock on the view to commit, so concurrent uploads queue behind each other, which one client does not show.",
    '- Scenario 1 uses one long reader and one steady writer, scenario 6 six closed-loop writers inserting messages; other traffic shapes (many readers, writers that also update users or channels, bursts, replicas) are not covered.',
    '',
  )
  // Every run's values, so the medians above can be checked (times in ms, sizes in bytes).
  const round = (_k, v) => (typeof v === 'number' && !Number.isInteger(v) ? Math.round(v * 10) / 10 : v)
  lines.push('## Per-run values', '', '<details><summary>times in ms, sizes in bytes</summary>', '')
  for (const s of sections) {
    lines.push(`${s.title}`, '', '```json')
    for (const [side, runs] of Object.entries(s.raw)) lines.push(`${JSON.stringify(side)}: ${JSON.stringify(runs, round)}`)
    lines.push('```', '')
  }
  lines.push('</details>', '')
  return lines.join('\n')
}

// ------------------------------------------------------------------------------------------------------------

async function main() {
  const cfg = parseArgs(process.argv.slice(2))
  const started = performance.now()
  ctx.tmp = mkdtempSync(path.join(os.tmpdir(), `e2ee-bench-${RUN}-`))
  let interrupted = false
  process.on('SIGINT', async () => {
    if (interrupted) process.exit(130)
    interrupted = true
    ctx.stopping = true
    log('interrupted: dropping the benchmark databases…')
    for (const c of ctx.children) c.kill('SIGTERM')
    // A CREATE DATABASE already sent may still commit: let it land, then drop everything twice.
    await sleep(1000)
    await cleanupAll().catch(() => {})
    await cleanupAll().catch(() => {})
    rmSync(ctx.tmp, {force: true, recursive: true})
    process.exit(130)
  })
  // The probes and writers hit databases that are being dropped, renamed or refused on purpose; postgres.js can
  // surface such a connection failure as a stray rejection besides the (handled) query error. Those are expected;
  // anything else is a bug: clean up and fail.
  const EXPECTED = new Set([
    '3D000',
    '57P01',
    '57P03',
    '55000',
    '08006',
    '08P01',
    'ECONNRESET',
    'ECONNREFUSED',
    'CONNECTION_CLOSED',
    'CONNECTION_ENDED',
    'CONNECTION_DESTROYED',
  ])
  const fatal = async (error) => {
    process.stderr.write(`bench failed: ${error?.stack ?? error}\n`)
    await cleanupAll().catch(() => {})
    rmSync(ctx.tmp, {force: true, recursive: true})
    process.exit(1)
  }
  process.on('unhandledRejection', (error) => {
    if (ctx.stopping || EXPECTED.has(error?.code)) return
    void fatal(error)
  })
  process.on('uncaughtException', (error) => {
    if (ctx.stopping || EXPECTED.has(error?.code)) return
    void fatal(error)
  })

  const [{version}] = await query('postgres', `select current_setting('server_version') as version`)
  log(`run ${RUN}: ${cfg.messages} messages, ${cfg.runs} run(s), devices ${cfg.devices.join('/')}, read ${cfg.readMs} ms, scenarios ${cfg.only.join(',')}`)
  const sections = []
  const skipped = []
  // One scenario; a failure is reported (and the scenario listed as not measured) and the others still run.
  const measure = async (n, fn) => {
    if (!cfg.only.includes(n)) return
    try {
      sections.push(await fn())
    } catch (error) {
      if (ctx.stopping) throw error // Ctrl+C: no report; the SIGINT handler cleans up and exits
      log(`scenario ${n} failed: ${error.stack ?? error}`)
      skipped.push(`Scenario ${n}: the run failed (${String(error.message ?? error).split('\n')[0]}).`)
    }
  }
  try {
    for (const [i, scenario] of SCENARIOS.entries()) {
      await measure(i + 1, async () => {
        const raw = await scenario.measure(cfg)
        return {title: scenario.title, what: scenario.what(cfg), ...(await scenario.report(cfg, raw)), raw}
      })
    }
  } finally {
    const n = await cleanupAll()
    rmSync(ctx.tmp, {force: true, recursive: true})
    log(`dropped ${n} benchmark database(s)`)
  }

  const meta = {
    date: `${new Date().toISOString().replace('T', ' ').slice(0, 16)} UTC`,
    machine: machine(),
    pgVersion: version,
    templateSize: ctx.templateSize,
    totalMs: performance.now() - started,
    skipped,
  }
  for (const s of sections) process.stdout.write(`\n${s.title}\n${s.table}\n`)
  process.stdout.write(`\ntotal ${fmtNum(meta.totalMs, 'ms')}; reproduce with: ${command(cfg)}\n`)
  if (skipped.length) process.exitCode = 1
  if (cfg.out) {
    writeFileSync(cfg.out, markdown(cfg, meta, sections))
    process.stdout.write(`wrote ${path.relative(process.cwd(), cfg.out) || cfg.out}\n`)
  } else {
    process.stdout.write('no file written (--quick and --only print only; --out FILE writes the report)\n')
  }
}

main().catch(async (error) => {
  if (ctx.stopping) return // the SIGINT handler drops the databases and exits 130
  process.stderr.write(`bench failed: ${error.stack ?? error}\n`)
  await cleanupAll().catch(() => {})
  if (ctx.tmp) rmSync(ctx.tmp, {force: true, recursive: true})
  process.exit(1)
})
