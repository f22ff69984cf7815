// What the scenarios of bench/run.js share to measure: the run's names, the server and its databases (all named
// e2ee_bench_<run id>_…, all dropped at the end), running psql, pg_dump and the plugin's CLI, the v0.3.0 template,
// the runs on clones of it, guide and ours alternating. The statistics and tables of the report: ./stats.js.

import {spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {closeSync, mkdirSync, openSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import postgres from 'postgres'

import {loadV030} from '../../scripts/v030-fixture.mjs'
import {fmtNum} from './stats.js'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const BIN = path.join(ROOT, 'bin', 'run.js')
export const GUIDE_SQL_FILE = path.join(ROOT, 'test', 'fixtures', 'guide_014_by_hand.sql')
export const ADMIN = {host: '127.0.0.1', port: 5432, user: 'postgres'}
export const RUN = randomBytes(3).toString('hex')
export const PREFIX = `e2ee_bench_${RUN}`

/** What the whole run shares: its scratch folder, the v0.3.0 template (made once), the processes it started. */
export const ctx = {tmp: '', template: '', templateSize: undefined, stopping: false, children: new Set()}

export function log(line) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`)
}

// ------------------------------------------------------------------------------------------------------------
// Processes

/** Runs a command; stdin/stdout may be files. Resolves with code, output and wall time; rejects only on spawn errors. */
export function run(cmd, args, {stdinFile, stdoutFile, env, cwd} = {}) {
  return new Promise((resolve, reject) => {
    const fds = []
    const stdin = stdinFile ? openSync(stdinFile, 'r') : 'ignore'
    const stdout = stdoutFile ? openSync(stdoutFile, 'w') : 'pipe'
    if (typeof stdin === 'number') fds.push(stdin)
    if (typeof stdout === 'number') fds.push(stdout)
    const t0 = performance.now()
    const child = spawn(cmd, args, {
      cwd: cwd ?? ROOT,
      env: {...process.env, PGCONNECT_TIMEOUT: '10', CI: 'true', NO_COLOR: '1', FORCE_COLOR: '0', ...env},
      stdio: [stdin, stdout, 'pipe'],
    })
    ctx.children.add(child)
    let out = ''
    let err = ''
    child.stdout?.on('data', (d) => {
      out += d
    })
    child.stderr.on('data', (d) => {
      err += d
    })
    const closed = () => {
      ctx.children.delete(child)
      for (const fd of fds) closeSync(fd)
    }
    child.on('error', (e) => {
      closed()
      reject(e)
    })
    child.on('close', (code) => {
      closed()
      resolve({code, ms: performance.now() - t0, stdout: out, stderr: err})
    })
  })
}

/** The first line of a tool's stderr, and its last three lines joined: what an error message quotes. */
export const firstLine = (text) => text.trim().split('\n')[0]
const lastLines = (text) => text.trim().split('\n').slice(-3).join(' | ')

export async function mustRun(cmd, args, opts) {
  const r = await run(cmd, args, opts)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${lastLines(r.stderr)}`)
  return r
}

export const conn = ['-h', ADMIN.host, '-p', String(ADMIN.port), '-U', ADMIN.user]
export const psqlArgs = (db, ...rest) => ['-X', '-q', ...conn, '-d', db, ...rest]

/** The plugin's CLI as an operator runs it (a scratch project folder, so no stray .env is read). */
export async function cli(args, projectDir) {
  const r = await run(
    process.execPath,
    [BIN, ...args, '--project-dir', projectDir, '--local', '--host', ADMIN.host, '--port', String(ADMIN.port), '-U', ADMIN.user],
    {
      cwd: projectDir,
    },
  )
  let json
  try {
    json = JSON.parse(r.stdout)
  } catch {
    json = undefined
  }
  if (r.code !== 0 || !json || json.ok === false) {
    // A dry run that would fail says why in `failure` (its document has ok: false and no error).
    throw new Error(`nself ${args.join(' ')} failed (exit ${r.code}): ${json?.failure ?? json?.error?.message ?? lastLines(r.stderr)}`)
  }
  return {...r, json}
}

/** The migration each side runs: the guide's SQL through plain psql (no ON_ERROR_STOP, no lock_timeout), or our migrate. */
export async function applyMigration(way, db, projectDir) {
  if (way === 'guide') {
    const res = await run('psql', psqlArgs(db), {stdinFile: GUIDE_SQL_FILE})
    if (/ERROR/.test(res.stderr)) throw new Error(`the guide's SQL failed: ${firstLine(res.stderr)}`)
    return res
  }
  const res = await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-backup', '--skip-dryrun', '-d', db], projectDir)
  if (res.json.after !== 16) throw new Error(`migrate ended at ${res.json.after}, not 16`)
  return res
}

export function scratchDir(name) {
  const dir = path.join(ctx.tmp, name)
  mkdirSync(dir, {recursive: true})
  return dir
}

// ------------------------------------------------------------------------------------------------------------
// Databases

export function pg(database, opts = {}) {
  return postgres({
    ...ADMIN,
    database,
    max: opts.max ?? 1,
    onnotice: () => {},
    idle_timeout: 5,
    connect_timeout: opts.connectTimeout ?? 10,
    connection: {application_name: `e2ee-bench-${RUN}`},
    ...(opts.extra ?? {}),
  })
}

/** `fn(sql)` on a connection to `database`, closed afterwards. */
export async function withDb(database, fn) {
  const sql = pg(database)
  try {
    return await fn(sql)
  } finally {
    await sql.end({timeout: 2})
  }
}

export const query = (database, text) => withDb(database, (sql) => sql.unsafe(text))

function ident(name) {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`unsafe identifier ${name}`)
  return `"${name}"`
}

export function assertRunning() {
  if (ctx.stopping) throw new Error('interrupted')
}

export async function dropDb(name) {
  await query('postgres', `DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`)
}

export async function cloneDb(template, name) {
  assertRunning()
  await query('postgres', `CREATE DATABASE ${ident(name)} TEMPLATE ${ident(template)}`)
  return name
}

/** Stops the processes still running and drops every database of this run; resolves with how many it dropped. */
export async function cleanupAll() {
  for (const c of ctx.children) c.kill('SIGTERM')
  return withDb('postgres', async (sql) => {
    const rows = await sql`select datname from pg_database where datname like ${`${PREFIX}%`}`
    for (const {datname} of rows) {
      await sql.unsafe(`DROP DATABASE IF EXISTS ${ident(datname)} WITH (FORCE)`).catch((e) => log(`could not drop ${datname}: ${e.message}`))
    }
    return rows.length
  })
}

/** A v0.3.0 database in `public` with the guide's ledger (versions 1..12): the tests' own generator. */
export async function createV030Database(name, {users, channels, messages}) {
  assertRunning()
  await query('postgres', `CREATE DATABASE ${ident(name)}`)
  await withDb(name, async (sql) => {
    await loadV030(sql, {channels, messages, users})
    await sql.unsafe('VACUUM ANALYZE')
  })
  return name
}

/** The run's v0.3.0 database (cfg's users, channels, messages), made once; the scenarios clone it. */
export async function template(cfg) {
  if (ctx.template) return ctx.template
  const name = `${PREFIX}_tpl`
  const t0 = performance.now()
  await createV030Database(name, {users: cfg.users, channels: cfg.channels, messages: cfg.messages})
  const [{size}] = await query('postgres', `select pg_database_size('${name}')::bigint as size`)
  ctx.templateSize = Number(size)
  log(`v0.3.0 template ${name}: ${cfg.messages} messages, ${fmtNum(Number(size), 'B')}, built in ${fmtNum(performance.now() - t0, 'ms')}`)
  ctx.template = name
  return name
}

/** Which side goes first alternates from run to run: `sides` in run 1, 3, …, reversed in run 2, 4, …. */
export const sidesOf = (r, sides) => (r % 2 ? sides : [...sides].reverse())

/**
 * `cfg.runs` runs of guide and ours, each on its own clone of `source` (named after the scenario's `tag`, dropped
 * afterwards): `{guide: [fn's results], ours: [...]}`.
 */
export async function onClones(cfg, source, tag, fn) {
  const results = {guide: [], ours: []}
  for (let r = 1; r <= cfg.runs; r++) {
    for (const way of sidesOf(r, ['guide', 'ours'])) {
      const db = await cloneDb(source, `${PREFIX}_${tag}_${way}_${r}`)
      try {
        results[way].push(await fn(db, way, r))
      } finally {
        await dropDb(db)
      }
    }
  }
  return results
}
