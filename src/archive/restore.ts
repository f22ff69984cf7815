import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {createInterface} from 'node:readline'

import {CancelledError} from '../errors.js'
import type {Target} from '../connection/target.js'
import type {PgTools} from '../connection/tools.js'
import {SENDS_TRANSACTION_TIMEOUT, TRANSACTION_TIMEOUT_ERROR} from '../connection/versions.js'

/** The pg_restore runner: a custom-format archive (or the entries of a list) into an existing database. */

export interface RestoreProgress {
  /** Archive entries restored so far (of `total`). */
  done: number
  total: number
  item?: string
}

export interface RestoreArchiveOptions {
  tools: PgTools
  target: Target
  database: string
  file: string
  /** A filtered `pg_restore --list` to restore only those entries. */
  listText?: string
  jobs?: number
  /** Extra pg_restore options (e.g. --no-owner, --no-subscriptions). */
  extraArgs?: string[]
  /** Number of entries the restore will process, for progress. */
  total: number
  onProgress?: (progress: RestoreProgress) => void
}

export function defaultJobs(): number {
  return Math.max(1, Math.min(4, os.availableParallelism()))
}

/**
 * pg_restore -j into `database`, stopping at the first error. In docker mode the dump and the list are copied
 * into the container first (a parallel restore needs a seekable file, not stdin). Throws an Error whose message
 * is pg_restore's own error line (the caller names the database and the file).
 */
export async function restoreArchive(opts: RestoreArchiveOptions): Promise<void> {
  const {tools} = opts
  const cleanups: Array<() => Promise<void>> = []
  let tmpDir: string | undefined
  try {
    const dump = await tools.provide(opts.file)
    cleanups.push(dump.cleanup)
    // pg_restore 17+ sends `SET transaction_timeout = 0` on each connection, which servers 16 and older reject
    // (src/connection/versions.ts): it runs without --exit-on-error, accepts exactly that error, and is stopped
    // here at the first other one, as --exit-on-error would.
    const tolerant = (await tools.toolMajor('pg_restore')) >= SENDS_TRANSACTION_TIMEOUT
    const args = [
      ...(tolerant ? [] : ['--exit-on-error']),
      '--verbose',
      `--jobs=${Math.max(1, Math.floor(opts.jobs ?? defaultJobs()))}`,
      '--no-password',
      ...(opts.extraArgs ?? []),
    ]
    if (opts.listText !== undefined) {
      tmpDir = await fs.mkdtemp(path.join(os.tmpdir(), 'nself-e2ee-'))
      const listPath = path.join(tmpDir, 'restore.list')
      await fs.writeFile(listPath, opts.listText, {mode: 0o600})
      const list = await tools.provide(listPath)
      cleanups.push(list.cleanup)
      args.push(`--use-list=${list.path}`)
    }
    args.push(dump.path)
    tools.scope.throwIfCancelled()

    const child = tools.run('pg_restore', args, opts.database, {buffer: false, stdin: 'ignore', stdout: 'ignore'})
    child.catch(() => {})
    const errors: string[] = []
    let done = 0
    let parallel = false
    let accepted = false
    let stopped = false
    // tools.run leaves stderr a pipe (only stdin and stdout are changed above): pg_restore's progress is read from it.
    const stderr = child.stderr
    if (!stderr) {
      child.kill('SIGTERM')
      throw new Error('pg_restore was started without a pipe for its stderr.')
    }
    const lines = createInterface({crlfDelay: Infinity, input: stderr})
    lines.on('line', (raw) => {
      const line = raw.replace(/^pg_restore: /, '')
      if (tolerant) {
        if (/error:/.test(line) && TRANSACTION_TIMEOUT_ERROR.test(line)) {
          accepted = true
          return
        }
        if ((accepted && /^Command was: SET transaction_timeout = 0;?$/.test(line)) || /^warning: errors ignored on restore: \d+$/.test(line)) return
        if (/error:/.test(line) && !stopped) {
          stopped = true
          child.kill('SIGTERM')
        }
      }
      if (/^(error|warning|FATAL|ERROR|DETAIL|HINT|Command was)/i.test(line) || /error:/.test(line)) {
        if (errors.length < 20) errors.push(line)
        return
      }
      if (line.startsWith('entering main parallel loop')) parallel = true
      else if (line.startsWith('finished main parallel loop')) parallel = false
      const counts = parallel ? line.startsWith('finished item') : /^(creating|processing data for|executing|restoring)/.test(line)
      if (counts) {
        done = Math.min(done + 1, opts.total)
        opts.onProgress?.({done, item: line, total: opts.total})
      }
    })
    try {
      await child.catch((error) => {
        // Exit status 1 with no error but the accepted one: pg_restore counted those, all else was restored.
        if (tolerant && !stopped && (error as {exitCode?: number}).exitCode === 1 && !errors.some((l) => /error:/i.test(l))) return
        throw error
      })
    } catch (error) {
      if (tools.scope.cancelled) throw new CancelledError()
      const first = errors.find((l) => /error:/i.test(l)) ?? errors[0] ?? (error as {shortMessage?: string}).shortMessage ?? String(error)
      const cmd = errors.find((l) => l.startsWith('Command was'))
      const detail = first
        .replace(/^error: /, '')
        .replace(/^(could not execute query: )?ERROR:\s+/, '')
        .replace(/\.$/, '')
      // A failing command may carry connection options (CREATE SUBSCRIPTION / USER MAPPING): never echo passwords.
      const shown = cmd
        ?.replace(/\s+/g, ' ')
        .replace(/(password\s*(=|\s)\s*)('[^']*'|\S+)/gi, '$1***')
        .slice(0, 200)
        .replace(/\.$/, '')
      throw new Error(shown ? `${detail} (${shown})` : detail)
    } finally {
      lines.close()
    }
    opts.onProgress?.({done: opts.total, total: opts.total})
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {})
    if (tmpDir) await fs.rm(tmpDir, {force: true, recursive: true}).catch(() => {})
  }
}
