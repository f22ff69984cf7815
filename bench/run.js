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

import {execFileSync, spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import postgres from 'postgres'

import {seedMaintenance} from '../scripts/maintain-fixture.mjs'
import {loadV030} from '../scripts/v030-fixture.mjs'

import {takeBackup} from '../dist/steps/backup.js'
import {TOUCHED_TABLES} from '../dist/nchat/tables.js'
import {resolveTarget} from '../dist/connection/target.js'
import {PgTools} from '../dist/connection/tools.js'
import {connect as pluginConnect} from '../dist/connection/connect.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const BIN = path.join(ROOT, 'bin', 'run.js')
const GUIDE_SQL_FILE = path.join(ROOT, 'test', 'fixtures', 'guide_014_by_hand.sql')
const ADMIN = {host: '127.0.0.1', port: 5432, user: 'postgres'}
const RUN = randomBytes(3).toString('hex')
const PREFIX = `e2ee_bench_${RUN}`
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

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
      process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 8).map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n')
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
// Small utilities

function pg(database, opts = {}) {
  return postgres({...ADMIN, database, max: opts.max ?? 1, onnotice: () => {}, idle_timeout: 5, connect_timeout: opts.connectTimeout ?? 10,
    connection: {application_name: `e2ee-bench-${RUN}`}, ...(opts.extra ?? {})})
}

function ident(name) {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`unsafe identifier ${name}`)
  return `"${name}"`
}

/** Runs a command; stdin/stdout may be files. Resolves with code, output and wall time; rejects only on spawn errors. */
function run(cmd, args, {stdinFile, stdoutFile, env, cwd} = {}) {
  return new Promise((resolve, reject) => {
    const fds = []
    const stdin = stdinFile ? openSync(stdinFile, 'r') : 'ignore'
    const stdout = stdoutFile ? openSync(stdoutFile, 'w') : 'pipe'
    if (typeof stdin === 'number') fds.push(stdin)
    if (typeof stdout === 'number') fds.push(stdout)
    const t0 = performance.now()
    const child = spawn(cmd, args, {cwd: cwd ?? ROOT, env: {...process.env, PGCONNECT_TIMEOUT: '10', CI: 'true', NO_COLOR: '1', FORCE_COLOR: '0', ...env}, stdio: [stdin, stdout, 'pipe']})
    children.add(child)
    let out = ''
    let err = ''
    child.stdout?.on('data', (d) => { out += d })
    child.stderr.on('data', (d) => { err += d })
    child.on('error', (e) => {
      children.delete(child)
      for (const fd of fds) closeSync(fd)
      reject(e)
    })
    child.on('close', (code) => {
      children.delete(child)
      for (const fd of fds) closeSync(fd)
      resolve({code, ms: performance.now() - t0, stdout: out, stderr: err})
    })
  })
}

async function mustRun(cmd, args, opts) {
  const r = await run(cmd, args, opts)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`)
  return r
}

const conn = ['-h', ADMIN.host, '-p', String(ADMIN.port), '-U', ADMIN.user]
const psqlArgs = (db, ...rest) => ['-X', '-q', ...conn, '-d', db, ...rest]

/** The plugin's CLI as an operator runs it (a scratch project folder, so no stray .env is read). */
async function cli(args, projectDir) {
  const r = await run(process.execPath, [BIN, ...args, '--project-dir', projectDir, '--local', '--host', ADMIN.host, '--port', String(ADMIN.port), '-U', ADMIN.user], {cwd: projectDir})
  let json
  try {
    json = JSON.parse(r.stdout)
  } catch {
    json = undefined
  }
  if (r.code !== 0 || !json || json.ok === false) {
    throw new Error(`nself ${args.join(' ')} failed (exit ${r.code}): ${json?.error?.message ?? r.stderr.trim().split('\n').slice(-3).join(' | ')}`)
  }
  return {...r, json}
}

function stats(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return {median: NaN, min: NaN, max: NaN, n: 0}
  const mid = Math.floor(v.length / 2)
  const median = v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
  return {median, min: v[0], max: v.at(-1), n: v.length}
}

function percentile(values, p) {
  if (values.length === 0) return NaN
  const v = [...values].sort((a, b) => a - b)
  return v[Math.min(v.length - 1, Math.ceil((p / 100) * v.length) - 1)]
}

function fmtNum(x, unit = '') {
  if (!Number.isFinite(x)) return 'n/a'
  if (unit === 'ms') {
    if (x >= 10_000) return `${(x / 1000).toFixed(1)} s`
    if (x >= 1000) return `${(x / 1000).toFixed(2)} s`
    if (x >= 100) return `${Math.round(x)} ms`
    if (x >= 10) return `${x.toFixed(1)} ms`
    return `${x.toFixed(2)} ms`
  }
  if (unit === 'B') {
    if (x >= 1024 ** 3) return `${(x / 1024 ** 3).toFixed(2)} GiB`
    if (x >= 1024 ** 2) return `${(x / 1024 ** 2).toFixed(1)} MiB`
    return `${(x / 1024).toFixed(0)} KiB`
  }
  return Number.isInteger(x) ? x.toLocaleString('en-US') : x.toFixed(1)
}

function cell(values, unit) {
  const s = stats(values)
  if (s.n === 0) return 'n/a'
  if (s.n === 1) return fmtNum(s.median, unit)
  return `${fmtNum(s.median, unit)} (${fmtNum(s.min, unit)}–${fmtNum(s.max, unit)})`
}

function ratio(ours, guide) {
  const a = stats(ours).median
  const b = stats(guide).median
  if (!Number.isFinite(a) || !Number.isFinite(b)) return 'n/a'
  if (b === 0) return a === 0 ? '1 (both 0)' : '∞'
  const r = a / b
  if (r === 0) return '0'
  return r >= 10 ? `${r.toFixed(0)}×` : r >= 0.1 ? `${r.toFixed(2)}×` : r >= 0.001 ? `${r.toFixed(3)}×` : '< 0.001×'
}

/** A markdown table: header row then rows of cells. */
function table(header, rows, {left = false} = {}) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((h, i) => (i === 0 || left ? '---' : '---:')).join('|')}|`]
  for (const r of rows) lines.push(`| ${r.join(' | ')} |`)
  return lines.join('\n')
}

function log(line) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`)
}

// ------------------------------------------------------------------------------------------------------------
// Databases (all named e2ee_bench_<run>_…, all dropped at the end)

const children = new Set()
let stopping = false

function assertRunning() {
  if (stopping) throw new Error('interrupted')
}

async function adminQuery(text) {
  const sql = pg('postgres')
  try {
    return await sql.unsafe(text)
  } finally {
    await sql.end({timeout: 2})
  }
}

async function dropDb(name) {
  await adminQuery(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`)
}

async function cloneDb(template, name) {
  assertRunning()
  await adminQuery(`CREATE DATABASE ${ident(name)} TEMPLATE ${ident(template)}`)
  return name
}

async function cleanupAll() {
  for (const c of children) c.kill('SIGTERM')
  const sql = pg('postgres')
  try {
    const rows = await sql`select datname from pg_database where datname like ${PREFIX + '%'}`
    for (const {datname} of rows) await sql.unsafe(`DROP DATABASE IF EXISTS ${ident(datname)} WITH (FORCE)`).catch((e) => log(`could not drop ${datname}: ${e.message}`))
    return rows.length
  } finally {
    await sql.end({timeout: 2})
  }
}

/** A v0.3.0 database in `public` with the guide's ledger (versions 1..12): the tests' own generator. */
async function createV030Database(name, {users, channels, messages}) {
  assertRunning()
  await adminQuery(`CREATE DATABASE ${ident(name)}`)
  const sql = pg(name)
  try {
    await loadV030(sql, {channels, messages, users})
    await sql.unsafe('VACUUM ANALYZE')
  } finally {
    await sql.end({timeout: 2})
  }
  return name
}

// ------------------------------------------------------------------------------------------------------------
// Load generators

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
    const [{channel, userId}] = await sql`select (select id from nchat_channels order by id limit 1) as channel, (select id from nchat_users order by id limit 1) as "userId"`
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
      const p = sql`insert into nchat_messages (channel_id, user_id, content) values (${channel}, ${userId}, 'live write')`
        .then(() => { latencies.push(performance.now() - due) }, () => { failures++; latencies.push(performance.now() - due) })
      inflight.add(p)
      p.finally(() => inflight.delete(p))
    }
    await Promise.all([...inflight])
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
      return {probes: probes.length, failed: probes.filter((p) => !p.ok).length, longestGapMs: Math.max(0, ...gaps), typicalGapMs: stats(gaps).median}
    },
  }
}

// ------------------------------------------------------------------------------------------------------------
// Shared fixtures

const ctx = {tmp: '', template: '', srcDb: '', plainDump: '', customDump: ''}

async function template(cfg) {
  if (ctx.template) return ctx.template
  const name = `${PREFIX}_tpl`
  const t0 = performance.now()
  await createV030Database(name, {users: cfg.users, channels: cfg.channels, messages: cfg.messages})
  const [{size}] = await adminQuery(`select pg_database_size('${name}')::bigint as size`)
  ctx.templateSize = Number(size)
  log(`v0.3.0 template ${name}: ${cfg.messages} messages, ${fmtNum(Number(size), 'B')}, built in ${fmtNum(performance.now() - t0, 'ms')}`)
  ctx.template = name
  return name
}

function scratchDir(name) {
  const dir = path.join(ctx.tmp, name)
  execFileSync('mkdir', ['-p', dir])
  return dir
}

// ------------------------------------------------------------------------------------------------------------
// Scenario 1: writer stall during the migration with a long read open (D5/D10)

async function scenario1(cfg) {
  const tpl = await template(cfg)
  const results = {guide: [], ours: []}
  for (let r = 1; r <= cfg.runs; r++) {
    const order = r % 2 ? ['guide', 'ours'] : ['ours', 'guide']
    for (const way of order) {
      const db = await cloneDb(tpl, `${PREFIX}_s1_${way}_${r}`)
      try {
        const writer = startWriter(db, cfg.writerEveryMs)
        await sleep(500)
        const reader = await holdLongRead(db, cfg.readMs)
        await sleep(100)
        let res
        const t0 = performance.now()
        if (way === 'guide') {
          // The guide's manual method: plain psql with the file on stdin, no ON_ERROR_STOP, no lock_timeout.
          res = await run('psql', psqlArgs(db), {stdinFile: GUIDE_SQL_FILE})
          if (/ERROR/.test(res.stderr)) throw new Error(`the guide's SQL failed: ${res.stderr.trim().split('\n')[0]}`)
        } else {
          res = await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-backup', '--skip-dryrun', '-d', db], scratchDir(`s1_${r}`))
          if (res.json.after !== 16) throw new Error(`migrate ended at ${res.json.after}, not 16`)
        }
        const migrationMs = performance.now() - t0
        await reader.done
        await sleep(500)
        const w = await writer.stop()
        const lat = w.latencies
        const row = {
          writes: lat.length, failures: w.failures, maxMs: Math.max(...lat), p99Ms: percentile(lat, 99), p50Ms: percentile(lat, 50),
          slow: lat.filter((x) => x > cfg.slowMs).length, migrationMs, applyMs: res.json?.applyMs, lockRetries: res.json?.lockRetries,
        }
        results[way].push(row)
        log(`s1 run ${r} ${way}: migration ${fmtNum(migrationMs, 'ms')}, writes ${row.writes}, max ${fmtNum(row.maxMs, 'ms')}, p99 ${fmtNum(row.p99Ms, 'ms')}, >${cfg.slowMs} ms: ${row.slow}, failed ${row.failures}`)
      } finally {
        await dropDb(db)
      }
    }
  }
  return results
}

function report1(cfg, res) {
  const col = (k, unit) => [cell(res.guide.map((x) => x[k]), unit), cell(res.ours.map((x) => x[k]), unit), ratio(res.ours.map((x) => x[k]), res.guide.map((x) => x[k]))]
  const rows = [
    ['longest write (max latency)', ...col('maxMs', 'ms')],
    ['p99 write latency', ...col('p99Ms', 'ms')],
    ['median write latency', ...col('p50Ms', 'ms')],
    [`writes that waited > ${cfg.slowMs} ms`, ...col('slow')],
    ['writes issued (during the whole window)', ...col('writes')],
    ['failed writes', ...col('failures')],
    ['migration wall time (ours: whole command)', ...col('migrationMs', 'ms')],
  ]
  const t = table(['metric', 'guide (psql < guide SQL)', 'ours (migrate --skip-backup --skip-dryrun)', 'ours/guide'], rows)
  const gMax = stats(res.guide.map((x) => x.maxMs)).median
  const oMax = stats(res.ours.map((x) => x.maxMs)).median
  const gSlow = stats(res.guide.map((x) => x.slow)).median
  const oSlow = stats(res.ours.map((x) => x.slow)).median
  const text = `With a ${fmtNum(cfg.readMs / 1000)} s read open, the guide's plain \`ALTER TABLE\` queued behind it and every write behind the ALTER: `
    + `the longest write took ${fmtNum(gMax, 'ms')} (median of runs) and ${fmtNum(gSlow)} writes waited more than ${cfg.slowMs} ms. `
    + `Ours waits for long transactions before it asks for a lock, then takes locks with its default 200 ms lock_timeout and builds the indexes CONCURRENTLY: `
    + `its apply step took ${fmtNum(stats(res.ours.map((x) => x.applyMs)).median, 'ms')} (the wait for the reader included; ${fmtNum(stats(res.ours.map((x) => x.lockRetries)).median)} lock retries, median), the longest write ${fmtNum(oMax, 'ms')} (worst run ${fmtNum(stats(res.ours.map((x) => x.maxMs)).max, 'ms')}), and ${fmtNum(oSlow)} writes waited over ${cfg.slowMs} ms. `
    + `Ours applies 013-016 and runs preflight, verify and vacuum around the apply; the guide applies its 014 SQL only.`
  return {table: t, text}
}

// ------------------------------------------------------------------------------------------------------------
// Scenario 7: the guide's cleanup DELETEs vs `maintain cleanup`, with a writer on the same rows

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
        const rows = await probe`select waitstart, extract(epoch from clock_timestamp() - waitstart) * 1000 as ms from pg_locks where pid = ${pid} and not granted and waitstart is not null`
        for (const r of rows) lockWaits.set(r.waitstart.getTime(), Number(r.ms))
        await sleep(10)
      }
    } finally {
      await probe.end({timeout: 2})
    }
  })()
  const done = (async () => {
    const [{maxAudit, maxPrekey}] = await sql`select (select max(id) from nchat_e2ee_audit_log)::int as "maxAudit", (select max(id) from nchat_one_time_prekeys)::int as "maxPrekey"`
    let i = 0
    while (running) {
      const t = performance.now()
      try {
        const op = i++ % 5
        if (op === 0) await sql`insert into nchat_e2ee_audit_log (event_type, metadata) values ('session_established', '{"class": "new"}')`
        else if (op === 1) await sql`update nchat_e2ee_audit_log set user_id = null where id = ${1 + Math.floor(Math.random() * maxAudit)}`
        else if (op === 2) await sql`update nchat_one_time_prekeys set prekey_public = prekey_public where id = ${1 + Math.floor(Math.random() * maxPrekey)} and is_consumed`
        // The oldest old row still there: the next row a cleanup batch takes, so the writer meets its row locks.
        else if (op === 3) await sql`update nchat_e2ee_audit_log set user_id = null where id = (select id from nchat_e2ee_audit_log where created_at < now() - interval '90 days' order by created_at limit 1)`
        else await sql`update nchat_one_time_prekeys set prekey_public = prekey_public where id = (select id from nchat_one_time_prekeys where is_consumed and consumed_at < now() - interval '30 days' order by consumed_at limit 1)`
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
  if (ctx.cleanupSrc) return ctx.cleanupSrc
  const db = await cloneDb(await template(cfg), `${PREFIX}_s7_src`)
  await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-backup', '--skip-dryrun', '-d', db], scratchDir('s7_migrate'))
  const t0 = performance.now()
  const sql = pg(db)
  try {
    const devices = Math.max(1, Math.round(cfg.cleanupRows / 1000))
    ctx.cleanupExpected = await seedMaintenance(sql, {auditRows: cfg.cleanupRows, devices, prekeysPerDevice: Math.round(cfg.cleanupRows / devices)})
    await sql.unsafe('VACUUM ANALYZE nchat_e2ee_audit_log, nchat_one_time_prekeys')
    const [{size}] = await sql`select pg_database_size(current_database())::bigint as size`
    ctx.cleanupDbSize = Number(size)
  } finally {
    await sql.end({timeout: 2})
  }
  log(`s7 source ${db}: ${cfg.cleanupRows} audit rows and prekeys, ${fmtNum(ctx.cleanupDbSize, 'B')}, seeded in ${fmtNum(performance.now() - t0, 'ms')}`)
  ctx.cleanupSrc = db
  return db
}

const GUIDE_CLEANUP_SQL = `DELETE FROM nchat_e2ee_audit_log WHERE created_at < NOW() - INTERVAL '90 days';
DELETE FROM nchat_one_time_prekeys WHERE is_consumed = TRUE AND consumed_at < NOW() - INTERVAL '30 days';`

async function scenario7(cfg) {
  const src = await cleanupSource(cfg)
  const results = {guide: [], ours: []}
  for (let r = 1; r <= cfg.runs; r++) {
    const order = r % 2 ? ['guide', 'ours'] : ['ours', 'guide']
    for (const way of order) {
      const db = await cloneDb(src, `${PREFIX}_s7_${way}_${r}`)
      try {
        const writer = startKeyWriter(db, 5)
        await sleep(500)
        const t0 = performance.now()
        let deleted
        let longestBatchMs
        let batches
        if (way === 'guide') {
          const res = await mustRun('psql', psqlArgs(db, '-c', GUIDE_CLEANUP_SQL))
          deleted = ctx.cleanupExpected.auditDelete + ctx.cleanupExpected.prekeyDelete
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
        const left = await (async () => {
          const sql = pg(db)
          try {
            const [row] = await sql`select (select count(*) from nchat_e2ee_audit_log where metadata->>'class' = 'old')::int as audit,
              (select count(*) from nchat_one_time_prekeys where prekey_id % 10 <= 3)::int as prekeys`
            return row.audit + row.prekeys
          } finally {
            await sql.end({timeout: 2})
          }
        })()
        const row = {
          deleted, left, cleanupMs, rowsPerS: deleted / (cleanupMs / 1000), writes: lat.length, failures: w.failures,
          maxMs: Math.max(...lat), p99Ms: percentile(lat, 99), slow: lat.filter((x) => x > cfg.slowMs).length, longestBatchMs, batches,
          lockWaits: w.lockWaits.length, maxLockWaitMs: Math.max(0, ...w.lockWaits), lockWaitsOver: w.lockWaits.filter((x) => x > cfg.slowMs).length,
          auditDeleted: ctx.cleanupExpected.auditDelete, prekeysDeleted: ctx.cleanupExpected.prekeyDelete,
        }
        results[way].push(row)
        log(`s7 run ${r} ${way}: ${row.deleted} rows in ${fmtNum(cleanupMs, 'ms')} (${fmtNum(row.rowsPerS)} rows/s), writes ${row.writes}, longest ${fmtNum(row.maxMs, 'ms')}, >${cfg.slowMs} ms: ${row.slow}, lock waits ${row.lockWaits} (longest ${fmtNum(row.maxLockWaitMs, 'ms')}, >${cfg.slowMs} ms: ${row.lockWaitsOver}), left ${left}`)
      } finally {
        await dropDb(db)
      }
    }
  }
  return results
}

function report7(cfg, res) {
  const col = (k, unit) => [cell(res.guide.map((x) => x[k]), unit), cell(res.ours.map((x) => x[k]), unit), ratio(res.ours.map((x) => x[k]), res.guide.map((x) => x[k]))]
  const rows = [
    ['writer\'s longest lock wait (pg_locks.waitstart, sampled every 10 ms)', ...col('maxLockWaitMs', 'ms')],
    [`writer's lock waits seen / over ${cfg.slowMs} ms (the lock timeout)`, ...['guide', 'ours'].map((k) => res[k].map((x) => `${fmtNum(x.lockWaits)} / ${fmtNum(x.lockWaitsOver)}`).join(', ')), ''],
    ['writer\'s longest operation (whole statement, client wall time)', ...col('maxMs', 'ms')],
    ['p99 writer operation', ...col('p99Ms', 'ms')],
    [`writer operations over ${cfg.slowMs} ms`, ...col('slow')],
    ['rows deleted', ...col('deleted')],
    ['old rows left', ...col('left')],
    ['cleanup wall time (ours: whole command)', ...col('cleanupMs', 'ms')],
    ['rows deleted per second', ...col('rowsPerS')],
    ['longest batch (ours)', 'n/a', cell(res.ours.map((x) => x.longestBatchMs), 'ms'), ''],
  ]
  const t = table(['metric', 'guide (two plain DELETEs)', 'ours (maintain cleanup)', 'ours/guide'], rows)
  const med = (way, k) => stats(res[way].map((x) => x[k])).median
  const text = `The guide's DELETE holds the lock of every row it deletes until it commits: a writer touching one of those rows (a user or device deletion, here an UPDATE of an old row) waited on a lock up to ${fmtNum(med('guide', 'maxLockWaitMs'), 'ms')} (its longest operation ${fmtNum(med('guide', 'maxMs'), 'ms')}). `
    + `Ours deletes in batches of at most 2,000 rows, each one statement and its own transaction with a 200 ms lock_timeout and a statement_timeout of half that (a batch never holds its rows longer), committed without waiting for the WAL flush, skipping rows a writer holds: the writer's longest lock wait was ${fmtNum(med('ours', 'maxLockWaitMs'), 'ms')}, under the 200 ms lock timeout; its longest operation, whole statement on the client (its own commit and the machine's scheduling included), ${fmtNum(med('ours', 'maxMs'), 'ms')}. `
    + `It is slower end to end (a pause between batches, a count before and after), which is the price of never holding many rows at once.`
  return {table: t, text}
}

// ------------------------------------------------------------------------------------------------------------
// Scenario 2: prekey upload and bundle fetch (D2)

function keySql(devices) {
  // Two devices a user; keys are deterministic byte strings of the real sizes (32-byte publics, 64-byte signatures).
  return `
INSERT INTO nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted, created_at)
SELECT 'dev-' || i, md5('user:' || ((i - 1) / 2 + 1))::uuid, sha256(('ik:' || i)::bytea), sha512(('ikp:' || i)::bytea) || sha256(('ikp:' || i)::bytea),
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1, ${devices}) i;
INSERT INTO nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature, created_at)
SELECT 'dev-' || i, 1, sha256(('spk:' || i)::bytea), sha512(('spkp:' || i)::bytea) || sha256(('spkp:' || i)::bytea), sha512(('sig:' || i)::bytea),
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1, ${devices}) i;
INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, created_at)
SELECT 'dev-' || i, k, sha256(('otk:' || i || ':' || k)::bytea), sha512(('otkp:' || i || ':' || k)::bytea) || sha256(('otkp:' || i || ':' || k)::bytea),
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' + k * interval '1 millisecond'
  FROM generate_series(1, ${devices}) i, generate_series(1, 5) k;`
}

const PREKEYS_PER_UPLOAD = 20

/** One device's key upload as an app does it: 1 identity key, 1 signed prekey, 20 one-time prekeys, one statement each, in one transaction. */
async function uploadDevice(sql, deviceId, userId) {
  const b = (s) => Buffer.from(s.padEnd(32, '.').slice(0, 32))
  const t0 = performance.now()
  await sql.begin(async (tx) => {
    await tx`insert into nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted) values (${deviceId}, ${userId}, ${b('ik' + deviceId)}, ${Buffer.concat([b('a'), b('b'), b('c')])})`
    await tx`insert into nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature) values (${deviceId}, 1, ${b('spk' + deviceId)}, ${Buffer.concat([b('a'), b('b'), b('c')])}, ${Buffer.concat([b('s'), b('t')])})`
    for (let k = 1; k <= PREKEYS_PER_UPLOAD; k++) {
      await tx`insert into nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted) values (${deviceId}, ${k}, ${b(`otk${k}${deviceId}`)}, ${Buffer.concat([b('a'), b('b'), b('c')])})`
    }
  })
  return performance.now() - t0
}

async function scenario2(cfg) {
  const results = {}
  const project = scratchDir('s2')
  for (const devices of cfg.devices) {
    const users = Math.ceil(devices / 2)
    const dbs = {guide: `${PREFIX}_s2_guide_${devices}`, ours: `${PREFIX}_s2_ours_${devices}`}
    results[devices] = {guide: {upload: [], fetch: [], claim: [], fetchOk: []}, ours: {upload: [], fetch: [], claim: [], fetchOk: []}}
    try {
      for (const way of ['guide', 'ours']) {
        await createV030Database(dbs[way], {users, channels: 10, messages: 2_000})
        if (way === 'guide') await mustRun('psql', psqlArgs(dbs[way], '-v', 'ON_ERROR_STOP=1', '-f', GUIDE_SQL_FILE))
        else await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-backup', '--skip-dryrun', '-d', dbs[way]], project)
        const sql = pg(dbs[way])
        const t0 = performance.now()
        await sql.unsafe(keySql(devices)) // set-based: one statement a table (so the guide's triggers refresh 3 times)
        await sql.unsafe('ANALYZE')
        await sql.end({timeout: 2})
        log(`s2 ${way} ${devices} devices: keys loaded in ${fmtNum(performance.now() - t0, 'ms')}`)
      }
      for (let r = 1; r <= cfg.runs; r++) {
        const order = r % 2 ? ['guide', 'ours'] : ['ours', 'guide']
        for (const way of order) {
          const sql = pg(dbs[way])
          try {
            const deviceId = `bench-device-${r}`
            const [{userId}] = await sql`select md5('user:1')::uuid as "userId"`
            const uploadMs = await uploadDevice(sql, deviceId, userId)
            // Bundle fetch: median of 21 fetches of this device's bundle (sub-millisecond queries: one alone is noise).
            const f = []
            let rows = 0
            for (let i = 0; i < 21; i++) {
              const t = performance.now()
              const got = await sql`select * from nchat_prekey_bundles where device_id = ${deviceId}`
              f.push(performance.now() - t)
              rows = got.length
            }
            // Session setup: fetch a bundle and consume its one-time prekey. Guide: SELECT from the view, then
            // UPDATE the prekey (its trigger refreshes the view). Ours: the atomic claim function.
            const tc = performance.now()
            if (way === 'guide') {
              await sql.begin(async (tx) => {
                const [b] = await tx`select * from nchat_prekey_bundles where device_id = ${deviceId}`
                await tx`update nchat_one_time_prekeys set is_consumed = true, consumed_at = now() where device_id = ${deviceId} and prekey_id = ${b.one_time_prekey_id}`
              })
            } else {
              await sql`select * from nchat_claim_prekey_bundle(${deviceId})`
            }
            const claimMs = performance.now() - tc
            const x = results[devices][way]
            x.upload.push(uploadMs)
            x.fetch.push(stats(f).median)
            x.claim.push(claimMs)
            x.fetchOk.push(rows === 1)
            log(`s2 ${devices} devices run ${r} ${way}: upload ${fmtNum(uploadMs, 'ms')}, fetch ${fmtNum(stats(f).median, 'ms')} (${rows} row), claim ${fmtNum(claimMs, 'ms')}`)
          } finally {
            await sql.end({timeout: 2})
          }
        }
      }
    } finally {
      for (const db of Object.values(dbs)) await dropDb(db)
    }
  }
  return results
}

function report2(cfg, res) {
  const rows = []
  const texts = []
  for (const devices of cfg.devices) {
    const g = res[devices].guide
    const o = res[devices].ours
    rows.push([`${fmtNum(devices)} devices: upload (22 INSERTs, 1 tx)`, cell(g.upload, 'ms'), cell(o.upload, 'ms'), ratio(o.upload, g.upload)])
    rows.push([`${fmtNum(devices)} devices: bundle fetch (1 device)`, cell(g.fetch, 'ms'), cell(o.fetch, 'ms'), ratio(o.fetch, g.fetch)])
    rows.push([`${fmtNum(devices)} devices: claim (fetch + consume 1 prekey)`, cell(g.claim, 'ms'), cell(o.claim, 'ms'), ratio(o.claim, g.claim)])
    texts.push(`at ${fmtNum(devices)} devices an upload took ${fmtNum(stats(g.upload).median, 'ms')} with the guide's materialized view (${fmtNum(stats(g.upload).median / (2 + PREKEYS_PER_UPLOAD), 'ms')} a statement) against ${fmtNum(stats(o.upload).median, 'ms')} with our plain view`)
  }
  const bad = cfg.devices.flatMap((d) => ['guide', 'ours'].filter((w) => res[d][w].fetchOk.some((ok) => !ok)).map((w) => `${w} at ${d}`))
  const t = table(['operation', 'guide (matview + refresh triggers)', 'ours (plain view)', 'ours/guide'], rows)
  const text = `Every statement on a key table makes the guide's trigger refresh the whole materialized view, so the cost grows with the number of devices: ${texts.join('; ')}. `
    + `A fetch reads one device's row in both (precomputed in the matview; two LIMIT 1 index probes in our view): ${cfg.devices.map((d) => `${fmtNum(stats(res[d].guide.fetch).median, 'ms')} vs ${fmtNum(stats(res[d].ours.fetch).median, 'ms')} at ${fmtNum(d)} devices`).join(', ')}. `
    + `Consuming a one-time prekey is a statement on a key table too, so in the guide each session setup also pays a refresh. `
    + (bad.length ? `The fetch did not return exactly one bundle for the new device in: ${bad.join(', ')}.` : `Both returned exactly one fresh bundle for the new device in every run.`)
  return {table: t, text}
}

// ------------------------------------------------------------------------------------------------------------
// Scenario 3: backup

async function sourceDb(cfg) {
  if (ctx.srcDb) return ctx.srcDb
  ctx.srcDb = await cloneDb(await template(cfg), `${PREFIX}_src`)
  return ctx.srcDb
}

function target(db, backupDir) {
  const projectDir = scratchDir('project')
  return resolveTarget({backupDir, database: db, host: ADMIN.host, local: true, port: ADMIN.port, projectDir, user: ADMIN.user}, {})
}

async function oursBackup(db, dir) {
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

async function scenario3(cfg) {
  const db = await sourceDb(cfg)
  const results = {guide: [], ours: [], raw: []}
  for (let r = 1; r <= cfg.runs; r++) {
    const dir = scratchDir(`s3_${r}`)
    const order = r % 2 ? ['guide', 'ours', 'raw'] : ['raw', 'ours', 'guide']
    for (const way of order) {
      if (way === 'guide') {
        const file = path.join(dir, 'backup_pre_v0.4.0.sql')
        const res = await mustRun('pg_dump', [...conn, db], {stdoutFile: file})
        results.guide.push({ms: res.ms, bytes: statSync(file).size})
        ctx.plainDump = file
      } else if (way === 'ours') {
        const b = await oursBackup(db, path.join(dir, 'backups'))
        results.ours.push({ms: b.ms, bytes: b.bytes})
        ctx.customDump = b.file
        ctx.compression = b.compression
      } else {
        const file = path.join(dir, 'raw.dump')
        const res = await mustRun('pg_dump', [...conn, '-Fc', '-Z', '1', '-f', file, db])
        results.raw.push({ms: res.ms, bytes: statSync(file).size})
      }
    }
    const last = (k) => results[k].at(-1)
    log(`s3 run ${r}: guide ${fmtNum(last('guide').ms, 'ms')} ${fmtNum(last('guide').bytes, 'B')}; ours ${fmtNum(last('ours').ms, 'ms')} ${fmtNum(last('ours').bytes, 'B')}; raw -Fc -Z1 ${fmtNum(last('raw').ms, 'ms')}`)
    // Keep the last run's files for scenario 4; remove the others.
    if (r < cfg.runs) rmSync(dir, {force: true, recursive: true})
  }
  return results
}

function report3(cfg, res) {
  const rows = [
    ['time', cell(res.guide.map((x) => x.ms), 'ms'), cell(res.ours.map((x) => x.ms), 'ms'), ratio(res.ours.map((x) => x.ms), res.guide.map((x) => x.ms)), cell(res.raw.map((x) => x.ms), 'ms')],
    ['size', cell(res.guide.map((x) => x.bytes), 'B'), cell(res.ours.map((x) => x.bytes), 'B'), ratio(res.ours.map((x) => x.bytes), res.guide.map((x) => x.bytes)), cell(res.raw.map((x) => x.bytes), 'B')],
  ]
  const t = table(['metric', 'guide (pg_dump > file.sql)', `ours (takeBackup: pg_dump -Fc ${ctx.compression ?? ''} + checks)`, 'ours/guide', 'reference: bare pg_dump -Fc -Z 1'], rows)
  const text = `Ours writes a compressed custom-format archive (${fmtNum(stats(res.ours.map((x) => x.bytes)).median, 'B')} against ${fmtNum(stats(res.guide.map((x) => x.bytes)).median, 'B')} of plain SQL) that pg_restore can load in parallel and selectively; `
    + `its time includes the row counts taken in the dump's snapshot, the read-back of the archive's table of contents and the sha256 for the manifest (the bare \`pg_dump -Fc -Z 1\` column shows the dump alone).`
  return {table: t, text}
}

// ------------------------------------------------------------------------------------------------------------
// Scenario 4: dry-run restore (D9)

async function ensureDumps(cfg) {
  const db = await sourceDb(cfg)
  const dir = scratchDir('s4_dumps')
  if (!ctx.plainDump) {
    ctx.plainDump = path.join(dir, 'backup_pre_v0.4.0.sql')
    await mustRun('pg_dump', [...conn, db], {stdoutFile: ctx.plainDump})
  }
  if (!ctx.customDump) {
    const b = await oursBackup(db, path.join(dir, 'backups'))
    ctx.customDump = b.file
    ctx.compression = b.compression
  }
  return db
}

async function scenario4(cfg) {
  const db = await ensureDumps(cfg)
  const results = {guide: [], ours: [], full: []}
  for (let r = 1; r <= cfg.runs; r++) {
    const order = r % 2 ? ['guide', 'ours', 'full'] : ['full', 'ours', 'guide']
    for (const way of order) {
      if (way === 'guide') {
        const test = `${PREFIX}_s4_test_${r}`
        try {
          const t0 = performance.now()
          await mustRun('psql', psqlArgs('postgres', '-c', `CREATE DATABASE ${test}`))
          const rest = await run('psql', psqlArgs(test), {stdinFile: ctx.plainDump})
          const restoreMs = performance.now() - t0
          if (/ERROR/.test(rest.stderr)) throw new Error(`psql restore reported: ${rest.stderr.trim().split('\n')[0]}`)
          const apply = await run('psql', psqlArgs(test, '-f', GUIDE_SQL_FILE))
          await mustRun('psql', psqlArgs('postgres', '-c', `DROP DATABASE ${test}`))
          results.guide.push({restoreMs, totalMs: performance.now() - t0, applyMs: apply.ms})
        } finally {
          await dropDb(test)
        }
      } else if (way === 'ours') {
        const res = await cli(['db', 'e2ee', 'dryrun', '--yes', '--json', '-d', db, '--from-backup', ctx.customDump, '--backup-dir', path.dirname(ctx.customDump)], scratchDir(`s4_${r}`))
        results.ours.push({restoreMs: res.json.restoreMs, totalMs: res.ms, applyMs: res.json.forecastMs})
        ctx.leftOut = res.json.leftOut
      } else {
        // Reference: the same archive restored whole with pg_restore -j 2, as our rollback does.
        const name = `${PREFIX}_s4_full_${r}`
        try {
          const t0 = performance.now()
          await mustRun('psql', psqlArgs('postgres', '-c', `CREATE DATABASE ${name}`))
          await mustRun('pg_restore', [...conn, '-d', name, '-j', '2', '--no-owner', ctx.customDump])
          results.full.push({restoreMs: performance.now() - t0})
        } finally {
          await dropDb(name)
        }
      }
    }
    log(`s4 run ${r}: guide restore ${fmtNum(results.guide.at(-1).restoreMs, 'ms')}, ours restore ${fmtNum(results.ours.at(-1).restoreMs, 'ms')} (dryrun ${fmtNum(results.ours.at(-1).totalMs, 'ms')}), full pg_restore -j2 ${fmtNum(results.full.at(-1).restoreMs, 'ms')}`)
  }
  return results
}

function report4(cfg, res) {
  const g = res.guide, o = res.ours
  const rows = [
    ['restore into a new database', cell(g.map((x) => x.restoreMs), 'ms'), cell(o.map((x) => x.restoreMs), 'ms'), ratio(o.map((x) => x.restoreMs), g.map((x) => x.restoreMs)), cell(res.full.map((x) => x.restoreMs), 'ms')],
    ['apply on the copy', cell(g.map((x) => x.applyMs), 'ms'), cell(o.map((x) => x.applyMs), 'ms'), ratio(o.map((x) => x.applyMs), g.map((x) => x.applyMs)), ''],
    ['whole dry run (wall)', cell(g.map((x) => x.totalMs), 'ms'), cell(o.map((x) => x.totalMs), 'ms'), ratio(o.map((x) => x.totalMs), g.map((x) => x.totalMs)), ''],
  ]
  const leftOut = ctx.leftOut ?? []
  const t = table(['step', 'guide (CREATE DATABASE + psql < plain.sql)', 'ours (dryrun --from-backup: restoreMs)', 'ours/guide', 'reference: full pg_restore -j 2 of our archive'], rows)
  const text = `Ours restores the custom-format archive with \`pg_restore -j\`, and only the data the migration reads or alters`
    + (leftOut.length ? ` (left out: ${leftOut.map((l) => `${l.table}${l.rows == null ? '' : ` ${fmtNum(l.rows)} rows`}`).join(', ')}; their definitions are restored)` : '')
    + `; the reference column restores the whole archive for an even comparison. `
    + `"Apply" is the guide's 014 SQL against our 013-016 (\`forecastMs\`, with the lock observation the dry run reports). "Whole dry run" is, for the guide, create + restore + psql of its SQL + drop; for ours, the \`dryrun\` command end to end (node start-up, preflight, restore, apply 013-016, verification, drop), with an existing backup (\`--from-backup\`, the one scenario 3 took).`
  return {table: t, text}
}

// ------------------------------------------------------------------------------------------------------------
// Scenario 5: rollback downtime (D7)

async function scenario5(cfg) {
  const tpl = await template(cfg)
  const [{n: expected}] = await (async () => {
    const sql = pg(tpl)
    try {
      return await sql`select count(*)::int as n from nchat_messages`
    } finally {
      await sql.end({timeout: 2})
    }
  })()
  const results = {guide: [], ours: []}
  for (let r = 1; r <= cfg.runs; r++) {
    const order = r % 2 ? ['guide', 'ours'] : ['ours', 'guide']
    for (const way of order) {
      const db = await cloneDb(tpl, `${PREFIX}_s5_${way}_${r}`)
      const dir = scratchDir(`s5_${way}_${r}`)
      try {
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
          if (/ERROR/.test(rest.stderr)) throw new Error(`psql restore reported: ${rest.stderr.trim().split('\n')[0]}`)
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
        const sql = pg(db)
        try {
          const [{n, v}] = await sql`select (select count(*)::int from nchat_messages) as n, (select max(version)::int from schema_migrations) as v`
          row.intact = n === expected && v === 12
        } finally {
          await sql.end({timeout: 2})
        }
        results[way].push(row)
        log(`s5 run ${r} ${way}: ${way === 'guide' ? 'drop+create+restore' : 'swap window'} ${fmtNum(row.internalMs, 'ms')}, probe longest gap ${fmtNum(row.longestGapMs, 'ms')} (${row.failed}/${row.probes} probes failed), rollback wall ${fmtNum(row.totalMs, 'ms')}, intact ${row.intact}`)
      } finally {
        await dropDb(db)
      }
    }
  }
  return results
}

function report5(cfg, res) {
  const g = res.guide, o = res.ours
  const col = (k, unit) => [cell(g.map((x) => x[k]), unit), cell(o.map((x) => x[k]), unit), ratio(o.map((x) => x[k]), g.map((x) => x[k]))]
  const rows = [
    ['downtime by the method\'s own clock', ...col('internalMs', 'ms')],
    [`longest gap between successful probes (every ${cfg.probeEveryMs} ms)`, ...col('longestGapMs', 'ms')],
    ['typical gap between successful probes (median)', ...col('typicalGapMs', 'ms')],
    ['failed probes', ...col('failed')],
    ['rollback wall time (database serving meanwhile for ours)', ...col('totalMs', 'ms')],
    ['  of which restore into the new database', '—', cell(o.map((x) => x.restoreMs), 'ms'), ''],
  ]
  const intact = [...g, ...o].every((x) => x.intact)
  const t = table(['metric', 'guide (DROP + CREATE + psql restore)', 'ours (rollback: restore beside, swap)', 'ours/guide'], rows)
  const text = `The guide's option 1 leaves no usable database from the DROP until psql has finished: ${fmtNum(stats(g.map((x) => x.internalMs)).median, 'ms')} (median), and a failed restore would leave none at all. `
    + `The outside probe saw the guide's data again after ${fmtNum(stats(g.map((x) => x.longestGapMs)).median, 'ms')}: psql commits each table's COPY as it goes, so the rows are readable while the restore is still building the primary keys, indexes and foreign keys (the probe counts that tail as up; the guide keeps the app stopped throughout anyway). `
    + `Ours restores into a new database while the live one keeps serving, then swaps names in one transaction: new connections waited ${fmtNum(stats(o.map((x) => x.internalMs)).median, 'ms')} by its own clock, ${fmtNum(stats(o.map((x) => x.failed)).median)} probe(s) failed (median) and the outside probe's longest gap was ${fmtNum(stats(o.map((x) => x.longestGapMs)).median, 'ms')} (typical gap ${fmtNum(stats(o.map((x) => x.typicalGapMs)).median, 'ms')}, the load of the restore running beside it included). `
    + (intact ? 'After every rollback the database was back at migration 12 with all its messages.' : 'WARNING: after at least one rollback the database was not back at migration 12 with all its messages (see the log).')
  return {table: t, text}
}

// ------------------------------------------------------------------------------------------------------------
// Scenario 6: busy writers, flat out, during the migration (issue 9: lock order and deadlocks)

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
    const [{channel, userId}] = await sql`select (select id from nchat_channels order by id offset ${i} limit 1) as channel, (select id from nchat_users order by id offset ${i} limit 1) as "userId"`
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

async function scenario6(cfg) {
  const tpl = await template(cfg)
  const results = {guide: [], ours: []}
  const tag = `busy write ${RUN}`
  for (let r = 1; r <= cfg.runs; r++) {
    const order = r % 2 ? ['guide', 'ours'] : ['ours', 'guide']
    for (const way of order) {
      const db = await cloneDb(tpl, `${PREFIX}_s6_${way}_${r}`)
      try {
        const load1 = os.loadavg()[0]
        const writers = startBusyWriters(db, BUSY_WRITERS, tag)
        await sleep(cfg.quick ? 1000 : 2000)
        let res
        const t0 = performance.now()
        if (way === 'guide') {
          res = await run('psql', psqlArgs(db), {stdinFile: GUIDE_SQL_FILE})
          if (/ERROR/.test(res.stderr)) throw new Error(`the guide's SQL failed: ${res.stderr.trim().split('\n')[0]}`)
        } else {
          res = await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-backup', '--skip-dryrun', '-d', db], scratchDir(`s6_${r}`))
          if (res.json.after !== 16) throw new Error(`migrate ended at ${res.json.after}, not 16`)
        }
        const migrationMs = performance.now() - t0
        await sleep(500)
        const w = await writers.stop()
        const [{rows}] = await adminQueryOn(db, `select count(*)::int as rows from nchat_messages where content = '${tag}'`)
        const failures = Object.values(w.errors).reduce((a, b) => a + b, 0)
        // Only the inserts sent while the migration ran; the ones before it show what the loaded machine does alone.
        const lat = w.latencies.filter((_, i) => w.starts[i] >= t0 && w.starts[i] < t0 + migrationMs)
        const before = w.latencies.filter((_, i) => w.starts[i] < t0)
        const row = {
          migrationMs, applyMs: res.json?.applyMs, lockRetries: res.json?.lockRetries, inserts: w.latencies.length - failures, failures, errors: w.errors,
          lost: w.latencies.length - failures - rows, maxMs: Math.max(...lat), p99Ms: percentile(lat, 99), slow: lat.filter((x) => x > cfg.slowMs).length,
          slowPct: (100 * lat.filter((x) => x > cfg.slowMs).length) / Math.max(1, lat.length), beforeMaxMs: Math.max(...before), load1,
          lockWaitMaxMs: Math.max(0, ...w.lockWaits.filter((x) => x.at >= t0 && x.at < t0 + migrationMs).map((x) => x.ms)),
        }
        results[way].push(row)
        log(`s6 run ${r} ${way}: migration ${fmtNum(migrationMs, 'ms')}, inserts ${row.inserts}, max ${fmtNum(row.maxMs, 'ms')}, >${cfg.slowMs} ms: ${row.slow}, errors ${JSON.stringify(w.errors)}, lost ${row.lost}`)
      } finally {
        await dropDb(db)
      }
    }
  }
  return results
}

async function adminQueryOn(database, text) {
  const sql = pg(database)
  try {
    return await sql.unsafe(text)
  } finally {
    await sql.end({timeout: 2})
  }
}

function report6(cfg, res) {
  const col = (k, unit) => [cell(res.guide.map((x) => x[k]), unit), cell(res.ours.map((x) => x[k]), unit), ratio(res.ours.map((x) => x[k]), res.guide.map((x) => x[k]))]
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
  const med = (side, k) => stats(res[side].map((x) => x[k])).median
  const codes = [...new Set([...res.guide, ...res.ours].flatMap((x) => Object.keys(x.errors)))]
  const load = stats([...res.guide, ...res.ours].map((x) => x.load1))
  const text = `The machine's 1-minute load average was ${fmtNum(load.min)}–${fmtNum(load.max)} at the start of the runs (2 CPUs, shared), so single inserts stall for hundreds of ms with no migration running (reference row). `
    + `With ${BUSY_WRITERS} writers inserting as fast as they could, the guide's plain statements took ${fmtNum(med('guide', 'migrationMs'), 'ms')} and its longest insert wait was ${fmtNum(med('guide', 'maxMs'), 'ms')} (median of runs; ${fmtNum(med('guide', 'slow'))} inserts over ${cfg.slowMs} ms): its plain CREATE INDEX and FOREIGN KEY on \`nchat_messages\` hold off every insert while they read the table. `
    + `Sampled in the server, the longest an insert was seen waiting for a lock was ${fmtNum(med('guide', 'lockWaitMaxMs'), 'ms')} with the guide and ${fmtNum(med('ours', 'lockWaitMaxMs'), 'ms')} with ours (worst run ${fmtNum(stats(res.ours.map((x) => x.lockWaitMaxMs)).max, 'ms')}); the rest of the insert latency is the loaded machine's disk and CPU. `
    + `Ours took ${fmtNum(med('ours', 'migrationMs'), 'ms')} for the whole command (apply ${fmtNum(med('ours', 'applyMs'), 'ms')}, ${fmtNum(med('ours', 'lockRetries'))} lock retries, median) with a longest insert wait of ${fmtNum(med('ours', 'maxMs'), 'ms')} (worst run ${fmtNum(stats(res.ours.map((x) => x.maxMs)).max, 'ms')}) and ${fmtNum(med('ours', 'slow'))} inserts over its ${cfg.slowMs} ms lock timeout: 014 takes \`nchat_messages\` before \`nchat_channels\`, the order every insert takes them in, so no insert is caught in a lock cycle. `
    + (codes.length ? `Errors seen by the writers: ${codes.join(', ')}. ` : 'No insert failed on either side, ')
    + `and every committed insert was found afterwards in ${[...res.guide, ...res.ours].every((x) => x.lost === 0) ? 'every run' : 'NOT every run (see the per-run values)'}.`
  return {table: t, text}
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
  lines.push('# Benchmarks: `nself db e2ee` vs the guide\'s manual method', '')
  lines.push('Generated by `bench/run.js`; every number below comes from one run of it (nothing is typed in by hand).')
  lines.push('The machine is small and shared, so read the medians and the ratios, not single timings; min–max in parentheses.', '')
  lines.push('## Run', '')
  lines.push(table(['', ''], [
    ['date', meta.date],
    ['command', `\`${command(cfg)}\` (in the repository root; builds dist/ first)`],
    ['machine', `${meta.machine.nproc} CPUs (${meta.machine.cpu}), ${meta.machine.memory} RAM, ${meta.machine.kernel}`],
    ['PostgreSQL', `${meta.pgVersion} on ${ADMIN.host}:${ADMIN.port}; ${meta.machine.pgDump}`],
    ['Node', meta.machine.node],
    ['data', `v0.3.0 database: ${fmtNum(cfg.users)} users, ${fmtNum(cfg.channels)} channels, ${fmtNum(cfg.messages)} messages, ${fmtNum(cfg.messages / 5)} reactions (${meta.templateSize ? fmtNum(meta.templateSize, 'B') : 'n/a'} on disk)`],
    ['runs', `${cfg.runs} per scenario and side, guide and ours alternating which goes first`],
    ['total time', fmtNum(meta.totalMs, 'ms')],
  ], {left: true}), '')
  lines.push('"guide" is the manual method of nChat\'s v0.4.0 migration guide, with the guide\'s own SQL (`test/fixtures/guide_014_by_hand.sql`: its tables, materialized view, refresh triggers, plain FK and plain indexes) applied with plain `psql`. "ours" is this plugin (`node bin/run.js db e2ee …`, or its library from `dist/`), applying migrations 013-016.', '')
  for (const s of sections) {
    lines.push(`## ${s.title}`, '')
    lines.push(s.what, '')
    lines.push(s.table, '')
    lines.push(s.text, '')
  }
  if (meta.skipped.length) lines.push('## Not measured in this run', '', ...meta.skipped.map((x) => `- ${x}`), '')
  lines.push('## Limits', '',
    '- Both sides run pg_dump, pg_restore and psql on this machine against a local server; the `docker exec` path of nself (and its pipe through the container) is not measured: there is no docker engine here.',
    '- The guide stops the app (`nself stop`) for its rollback; that stop and start are not counted in its downtime, so its real downtime is longer than shown.',
    '- Scenario 2 times one upload at a time; the guide\'s refresh also holds an EXCLUSIVE lock on the view to commit, so concurrent uploads queue behind each other, which one client does not show.',
    '- Scenario 1 uses one long reader and one steady writer, scenario 6 six closed-loop writers inserting messages; other traffic shapes (many readers, writers that also update users or channels, bursts, replicas) are not covered.', '')
  // Every run's values, so the medians above can be checked (times in ms, sizes in bytes).
  const round = (k, v) => (typeof v === 'number' && !Number.isInteger(v) ? Math.round(v * 10) / 10 : v)
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
    stopping = true
    log('interrupted: dropping the benchmark databases…')
    for (const c of children) c.kill('SIGTERM')
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
  const EXPECTED = new Set(['3D000', '57P01', '57P03', '55000', '08006', '08P01', 'ECONNRESET', 'ECONNREFUSED', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED'])
  const fatal = async (error) => {
    process.stderr.write(`bench failed: ${error?.stack ?? error}\n`)
    await cleanupAll().catch(() => {})
    rmSync(ctx.tmp, {force: true, recursive: true})
    process.exit(1)
  }
  process.on('unhandledRejection', (error) => {
    if (stopping || EXPECTED.has(error?.code)) return
    void fatal(error)
  })
  process.on('uncaughtException', (error) => {
    if (stopping || EXPECTED.has(error?.code)) return
    void fatal(error)
  })

  const [{version}] = await adminQuery(`select current_setting('server_version') as version`)
  log(`run ${RUN}: ${cfg.messages} messages, ${cfg.runs} run(s), devices ${cfg.devices.join('/')}, read ${cfg.readMs} ms, scenarios ${cfg.only.join(',')}`)
  const sections = []
  const skipped = []
  // One scenario; a failure is reported (and the scenario listed as not measured) and the others still run.
  const measure = async (n, fn) => {
    if (!cfg.only.includes(n)) return
    try {
      sections.push(await fn())
    } catch (error) {
      if (stopping) throw error // Ctrl+C: no report; the SIGINT handler cleans up and exits
      log(`scenario ${n} failed: ${error.stack ?? error}`)
      skipped.push(`Scenario ${n}: the run failed (${String(error.message ?? error).split('\n')[0]}).`)
    }
  }
  try {
    await measure(1, async () => {
      const res = await scenario1(cfg)
      return {
        title: '1. Writers during the migration, with a long read open (D5, D10)',
        what: `A v0.3.0 database with ${fmtNum(cfg.messages)} messages; an open-loop writer due to INSERT into \`nchat_messages\` every ${cfg.writerEveryMs} ms (8 connections; latency counted from when each write was due); `
          + `0.5 s after the writer starts, a read transaction takes ACCESS SHARE on \`nchat_messages\` and holds it ${fmtNum(cfg.readMs / 1000)} s; 0.1 s later the migration starts. `
          + `Guide: \`psql -d DB < guide_014_by_hand.sql\` (no ON_ERROR_STOP, no lock_timeout). Ours: \`node bin/run.js db e2ee migrate --yes --json --local --skip-backup --skip-dryrun -d DB\`. `
          + `Writer latencies are taken over the whole window (0.5 s before the read until 0.5 s after both the read and the migration ended).`,
        ...report1(cfg, res), raw: res,
      }
    })
    await measure(2, async () => {
      const res = await scenario2(cfg)
      return {
        title: '2. Prekey upload and bundle fetch (D2)',
        what: `Two databases per size, ${cfg.devices.map((d) => fmtNum(d)).join(' and ')} devices (2 a user), each with an identity key, an active signed prekey and 5 one-time prekeys (loaded set-based). `
          + `Guide: its SQL applied with psql (materialized view \`nchat_prekey_bundles\` refreshed CONCURRENTLY by three statement triggers). Ours: migrated by \`migrate\` (plain view with LATERAL … LIMIT 1). `
          + `Upload: one new device as an app sends it, 1 identity key + 1 signed prekey + ${PREKEYS_PER_UPLOAD} one-time prekeys, ${2 + PREKEYS_PER_UPLOAD} INSERT statements in one transaction. `
          + `Fetch: \`SELECT * FROM nchat_prekey_bundles WHERE device_id = $1\` for that device (median of 21 per run). Claim: fetch and consume one one-time prekey (guide: SELECT + UPDATE in a transaction; ours: \`nchat_claim_prekey_bundle($1)\`).`,
        ...report2(cfg, res), raw: res,
      }
    })
    await measure(3, async () => {
      const res = await scenario3(cfg)
      return {
        title: '3. Backup',
        what: `The ${fmtNum(cfg.messages)}-message database. Guide: \`pg_dump DB > backup_pre_v0.4.0.sql\` (plain SQL). Ours: \`takeBackup\` from \`dist/steps/backup.js\`, what \`migrate\` runs: \`pg_dump -Fc\` with light compression inside an exported snapshot, row counts in that snapshot, TOC read back, sha256 and manifest.`,
        ...report3(cfg, res), raw: res,
      }
    })
    await measure(4, async () => {
      const res = await scenario4(cfg)
      return {
        title: '4. Dry run: restoring the backup into a test database (D9)',
        what: `Guide: \`CREATE DATABASE test\` then \`psql -d test < backup_pre_v0.4.0.sql\` (timed together as the restore), then \`psql -d test -f\` its SQL, then DROP. `
          + `Ours: \`node bin/run.js db e2ee dryrun --yes --json --local -d DB --from-backup FILE\`; the restore time is \`restoreMs\` from its JSON.`,
        ...report4(cfg, res), raw: res,
      }
    })
    await measure(5, async () => {
      const res = await scenario5(cfg)
      return {
        title: '5. Rollback downtime (D7)',
        what: `A migrated ${fmtNum(cfg.messages)}-message database is rolled back to its pre-migration backup while an outside client opens a new connection every ${cfg.probeEveryMs} ms and checks that each v0.3.0 table has rows (a failed connection, an error, a missing or empty table count as down; a blocked probe delays the next). `
          + `Guide (option 1): \`DROP DATABASE\` (WITH (FORCE), as the probe keeps connecting), \`CREATE DATABASE\`, \`psql -d DB < backup.sql\`; its own downtime is that whole sequence. `
          + `Ours: \`node bin/run.js db e2ee rollback --yes --json --local -d DB --backup-dir DIR\` after \`migrate\` took the backup; its own downtime is \`swapWindowMs\` (new connections wait). The setup (backup, migration) is not timed.`,
        ...report5(cfg, res), raw: res,
      }
    })
    await measure(6, async () => {
      const res = await scenario6(cfg)
      return {
        title: '6. Busy writers during the migration (lock order, deadlocks)',
        what: `A v0.3.0 database with ${fmtNum(cfg.messages)} messages; ${BUSY_WRITERS} writers, each on its own connection, INSERT into \`nchat_messages\` (with a channel and a user, so each runs the foreign-key checks) back to back, as fast as the server takes them, from ${cfg.quick ? 1 : 2} s before the migration until 0.5 s after it; the server's default deadlock_timeout. Latencies are those of the inserts sent while the migration ran. `
          + `Guide: \`psql -d DB < guide_014_by_hand.sql\`. Ours: \`node bin/run.js db e2ee migrate --yes --json --local --skip-backup --skip-dryrun -d DB\` (lock timeout 200 ms). `
          + `Afterwards the committed inserts are counted in the table.`,
        ...report6(cfg, res), raw: res,
      }
    })
    await measure(7, async () => {
      const res = await scenario7(cfg)
      return {
        title: '7. Cleanup of old audit rows and consumed prekeys, with a writer on the same rows',
        what: `A migrated database with ${fmtNum(cfg.cleanupRows)} audit log rows (60 % older than 90 days) and ${fmtNum(cfg.cleanupRows)} one-time prekeys (40 % consumed over 30 days ago): ${fmtNum(ctx.cleanupExpected?.auditDelete ?? NaN)} aged audit rows and ${fmtNum(ctx.cleanupExpected?.prekeyDelete ?? NaN)} consumed prekeys to delete, ${fmtNum(ctx.cleanupDbSize ?? NaN, 'B')}, cloned for each run. `
          + `A writer, one operation every 5 ms, inserts audit rows, sets user_id to NULL on old audit rows and updates old consumed prekeys (what a user or device deletion does to them), at random and at the oldest old row still there (the next row a cleanup batch takes). Its latencies are whole statements, wall time on the client. `
          + `Guide: \`psql -c\` with its two DELETE statements. Ours: \`node bin/run.js db e2ee maintain cleanup --yes --json --local -d DB\` (defaults: batches of 2,000, 20 ms pause, 200 ms lock_timeout).`,
        ...report7(cfg, res), raw: res,
      }
    })
    await measure(8, async () => {
      // Its own module (bench/dryrun-sizes.js, also runnable alone); its databases come from cached templates.
      const {backupTable, dryrunSizes, dryrunTable} = await import('./dryrun-sizes.js')
      const res = await dryrunSizes(cfg.quick ? [20_000, 100_000] : [100_000, 1_000_000, 5_000_000])
      const [dh, ...dr] = dryrunTable(res)
      const [bh, ...br] = backupTable(res)
      return {
        title: '8. Dry run and backup at 100k, 1M and 5M messages (issue 11)',
        what: 'Guide: `pg_dump` (plain), `createdb`, `psql` restore, its SQL, `dropdb`, end to end. Ours: `dryrun --yes --json` end to end (no backup: a rehearsal dump of the schema and the rows the copy restores, removed at the end; the copy with the whole schema and only the rows 013-016 read, apply, verify, forecast). '
          + 'Forecast against the actual apply (`migrate --skip-backup --skip-dryrun`) on the same database; backup formats in MB/s of database. Details: [benchmarks-dryrun.md](benchmarks-dryrun.md) (`node bench/dryrun-sizes.js`).',
        table: table(dh, dr) + '\n\n' + table(bh, br),
        text: '',
        raw: res,
      }
    })
  } finally {
    const n = await cleanupAll()
    rmSync(ctx.tmp, {force: true, recursive: true})
    log(`dropped ${n} benchmark database(s)`)
  }

  const meta = {date: new Date().toISOString().replace('T', ' ').slice(0, 16) + ' UTC', machine: machine(), pgVersion: version, templateSize: ctx.templateSize, totalMs: performance.now() - started, skipped}
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
  if (stopping) return // the SIGINT handler drops the databases and exits 130
  process.stderr.write(`bench failed: ${error.stack ?? error}\n`)
  await cleanupAll().catch(() => {})
  if (ctx.tmp) rmSync(ctx.tmp, {force: true, recursive: true})
  process.exit(1)
})
