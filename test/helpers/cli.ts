import {type ChildProcess, spawn} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {afterEach} from 'vitest'

import {ADMIN, connect, createV030Database, dropDatabase, REPO_ROOT, type V030Database} from './fixture.js'

export const BIN = path.join(REPO_ROOT, 'bin', 'run.js')
export const FAKE_DOCKER_DIR = path.join(REPO_ROOT, 'test', 'bin')

export interface CliResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export interface CliOptions {
  env?: Record<string, string | undefined>
  /** Called with the output so far; return true to send `signal` (SIGINT unless given), once. */
  interruptWhen?: (output: string) => boolean
  signal?: NodeJS.Signals
  /** Called with the output so far and the child, on every chunk (for tests that act in several stages). */
  onOutput?: (output: string, child: ChildProcess) => void
  /** Called once with the child as soon as it started. */
  onSpawn?: (child: ChildProcess) => void
  timeoutMs?: number
}

/** Run `node bin/run.js args…` as an operator would (no TTY: stdin closed, CI set). */
export function runCli(args: string[], options: CliOptions = {}): Promise<CliResult & {interrupted: boolean}> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: {...process.env, CI: 'true', FORCE_COLOR: '0', NO_COLOR: '1', ...options.env},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    options.onSpawn?.(child)
    let stdout = ''
    let stderr = ''
    let interrupted = false
    const check = () => {
      if (!interrupted && options.interruptWhen?.(stdout + stderr)) {
        interrupted = true
        child.kill(options.signal ?? 'SIGINT')
      }
      options.onOutput?.(stdout + stderr, child)
    }
    child.stdout.on('data', (d) => {
      stdout += d
      check()
    })
    child.stderr.on('data', (d) => {
      stderr += d
      check()
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 150_000)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({code, interrupted, signal, stderr, stdout})
    })
  })
}

export function localArgs(database: string): string[] {
  return ['--local', '--host', ADMIN.host, '--port', String(ADMIN.port), '--user', ADMIN.user, '--database', database]
}

/** An nself project folder with an .env (and the given extra lines), for tests that read env files. */
export function makeProject(env: Record<string, string>): {dir: string; cleanup: () => void} {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'e2ee-proj-'))
  writeFileSync(
    path.join(dir, '.env'),
    `${Object.entries(env)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n')}\n`,
  )
  return {cleanup: () => rmSync(dir, {force: true, recursive: true}), dir}
}

export function tmpDir(prefix = 'e2ee-bk-'): {dir: string; cleanup: () => void} {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix))
  return {cleanup: () => rmSync(dir, {force: true, recursive: true}), dir}
}

export function fakeDockerEnv(container: string, log: string, secret?: string): Record<string, string> {
  return {
    FAKE_DOCKER_CONTAINER: container,
    FAKE_DOCKER_LOG: log,
    ...(secret ? {FAKE_DOCKER_SECRET: secret} : {}),
    PATH: `${FAKE_DOCKER_DIR}${path.delimiter}${process.env.PATH}`,
  }
}

export function dockerCalls(log: string): string[][] {
  try {
    return readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as string[])
  } catch {
    return []
  }
}

// biome-ignore lint/suspicious/noExplicitAny: the commands' --json output, read by each test as it expects it
export function parseJson(stdout: string): any {
  return JSON.parse(stdout)
}

/** Databases this tool made beside `db` (dry-run clones, restores, kept pre-rollback copies). */
export async function leftoverDatabases(db: string, kind = 'e2ee'): Promise<string[]> {
  const sql = connect('postgres')
  try {
    const rows = await sql<{datname: string}[]>`select datname from pg_database where datname like ${`${db}\\_${kind}\\_%`} order by 1`
    return rows.map((r) => r.datname)
  } finally {
    await sql.end()
  }
}

export async function ledgerVersion(db: string): Promise<number> {
  const sql = connect(db)
  try {
    const [{v}] = await sql<{v: number}[]>`select max(version)::int as v from schema_migrations`
    return v
  } finally {
    await sql.end()
  }
}

/**
 * For an e2e test file: `fresh()` makes a v0.3.0 database, `backupDir()` a backup folder, `cleanups` takes more;
 * after each test all of it is dropped, with any database the tool made beside it (clones, kept copies).
 */
export function e2eScope() {
  const cleanups: Array<() => Promise<void> | void> = []
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!()
  })
  return {
    backupDir(): string {
      const t = tmpDir()
      cleanups.push(t.cleanup)
      return path.join(t.dir, 'backups')
    },
    cleanups,
    async fresh(opts: Parameters<typeof createV030Database>[0] = {}): Promise<V030Database> {
      const db = await createV030Database(opts)
      cleanups.push(async () => {
        for (const d of await leftoverDatabases(db.name, '%')) await dropDatabase(d)
        await db.drop()
      })
      return db
    },
  }
}

export interface Background {
  output(): string
  /** Resolves when the output contains `text` (rejects when the command ends first). */
  waitFor(text: string | RegExp): Promise<void>
  done: Promise<{code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string}>
  /** Send a signal (SIGINT, SIGTERM) and wait for the command to end. */
  kill(signal: NodeJS.Signals): Promise<{code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string}>
  kill9(): Promise<void>
  resume(): void
}

/**
 * `node bin/run.js args…` in the background (no TTY, CI set); `pause` names a fault point it stops at until resume()
 * (src/test-pause.ts). It is killed after `timeoutMs`, and by `cleanups` if still running.
 */
export function startCli(args: string[], o: {cleanups: Array<() => Promise<void> | void>; pause?: string; timeoutMs: number}): Background {
  const t = tmpDir('e2ee-resume-')
  o.cleanups.push(t.cleanup)
  const resumeFile = path.join(t.dir, 'resume')
  const child = spawn(process.execPath, [BIN, ...args], {
    env: {
      ...process.env,
      CI: 'true',
      FORCE_COLOR: '0',
      NO_COLOR: '1',
      ...(o.pause ? {NSELF_E2EE_TEST_PAUSE: o.pause, NSELF_E2EE_TEST_RESUME: resumeFile} : {}),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  const waiters: Array<() => void> = []
  const notify = () => {
    for (const w of waiters.splice(0)) w()
  }
  child.stdout.on('data', (d) => {
    stdout += d
    notify()
  })
  child.stderr.on('data', (d) => {
    stderr += d
    notify()
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs)
  const done = new Promise<{code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string}>((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({code, signal, stderr, stdout})
      notify()
    })
  })
  o.cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const output = () => stdout + stderr
  return {
    done,
    kill(signal) {
      child.kill(signal)
      return done
    },
    async kill9() {
      child.kill('SIGKILL')
      await done
    },
    output,
    resume: () => writeFileSync(resumeFile, ''),
    waitFor(text) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const out = output()
          if (typeof text === 'string' ? out.includes(text) : text.test(out)) return resolve()
          if (child.exitCode !== null || child.signalCode !== null) return reject(new Error(`ended before "${text}":\n${out}`))
          waiters.push(check)
        }
        check()
      })
    },
  }
}

/** The tool's own server sessions (not the tests', named nself-e2ee-tests). */
export const TOOL_SESSIONS = `application_name like 'nself-e2ee-%' and application_name <> 'nself-e2ee-tests'`

/** How many sessions of the tool are still on `database`, after waiting up to 10 s for them to go. */
export async function toolSessionsLeft(database: string): Promise<number> {
  const sql = connect('postgres')
  try {
    let left = 1
    for (let i = 0; i < 40 && left > 0; i++) {
      ;[{left}] = await sql.unsafe<{left: number}[]>(`select count(*)::int as left from pg_stat_activity where ${TOOL_SESSIONS} and datname = $1`, [database])
      if (left > 0) await new Promise((res) => setTimeout(res, 250))
    }
    return left
  } finally {
    await sql.end()
  }
}
