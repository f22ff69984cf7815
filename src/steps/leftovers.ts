import fs from 'node:fs/promises'
import path from 'node:path'

import {UserError} from '../errors.js'
import type {CommandLock} from '../migrations/command-lock.js'
import {quoteIdent, validateIdentifier} from '../pg/identifiers.js'
import {type Querier, RUN_ID, type Sql} from '../connection/connect.js'
import {REHEARSAL_FILE, SIDECAR_DIR} from '../archive/manifest.js'
import {COMMENT_PREFIX, dropDatabase, newDatabaseName, type NewDatabaseKind} from '../pg/databases.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.steps.leftovers')

/**
 * What an interrupted command can leave behind, and how the next command proves it is its own to remove.
 *
 * - Databases `<db>_e2ee_dryrun_<ts>` / `<db>_e2ee_restore_<ts>` whose comment (written when they are created)
 *   names this tool, the database and the run id.
 * - Backup files `<name>.dump.<run>.partial` (and their manifest's `.partial`), named with the run id.
 * - Rehearsal dumps of standalone dry runs, `.nself-e2ee/rehearsal_<db>.<run>.dump`, named with the run id.
 * - The target refusing connections (`datallowconn` false), which an interrupted swap of an older version could
 *   leave; the swap of this version never closes the live database.
 *
 * Proof of ownership: a command sweeps only while it holds the command lock of the database (so no other
 * command on it is running) and removes only what names a run other than its own; a `.partial` file or a rehearsal dump is removed
 * only when no server session carries its run id (every run that writes one holds its lock session until it
 * ends). Dry-run clones kept with --keep-dryrun-db are never removed.
 */

export interface LeftoverDatabase {
  name: string
  kind: NewDatabaseKind
  comment: string
  run: string | null
  kept: boolean
  /** Sessions on it that are not this tool's. */
  foreignSessions: number
}

export interface LeftoverFile {
  file: string
  run: string | null
  /** 'partial': an unfinished backup; 'rehearsal': a standalone dry run's rehearsal dump (no backup). */
  kind: 'partial' | 'rehearsal'
}

const runOf = (comment: string) => /, run ([0-9a-f]+)/.exec(comment)?.[1] ?? null

/** Our databases beside `database`: name pattern AND our comment naming `database`. */
export async function leftoverDatabases(admin: Querier, database: string): Promise<LeftoverDatabase[]> {
  validateIdentifier(database, 'database')
  const rows = await admin<{name: string; comment: string | null; foreign: number}[]>`
    select d.datname as name, shobj_description(d.oid, 'pg_database') as comment,
           (select count(*)::int from pg_stat_activity a where a.datname = d.datname
              and not starts_with(coalesce(a.application_name, ''), 'nself-e2ee-')) as foreign
    from pg_database d where strpos(d.datname, '_e2ee_') > 0 order by d.datname`
  const out: LeftoverDatabase[] = []
  for (const kind of ['dryrun', 'restore'] as const) {
    const head = newDatabaseName(database, kind, new Date(0)).slice(0, -14)
    for (const r of rows) {
      if (!r.name.startsWith(head) || !/^\d{14}$/.test(r.name.slice(head.length)) || !r.comment) continue
      if (!r.comment.startsWith(`${COMMENT_PREFIX[kind]}${database},`)) continue
      out.push({comment: r.comment, foreignSessions: r.foreign, kept: r.comment.endsWith(', kept'), kind, name: r.name, run: runOf(r.comment)})
    }
  }
  return out
}

const PARTIAL = /\.dump\.(?:([0-9a-f]{8})\.)?partial$|\.dump\.(?:([0-9a-f]{8})\.)?manifest\.json\.partial$/

/**
 * Unfinished backup files in the backup folder and its sidecar folder, and rehearsal dumps of dry runs in the
 * sidecar folder (none when they do not exist).
 */
export async function leftoverPartials(dir: string): Promise<LeftoverFile[]> {
  const found: LeftoverFile[] = []
  for (const folder of [dir, path.join(dir, SIDECAR_DIR)]) {
    const names = await fs.readdir(folder).catch(() => [] as string[])
    for (const n of names.sort()) {
      const m = PARTIAL.exec(n)
      if (m) found.push({file: path.join(folder, n), kind: 'partial', run: m[1] ?? m[2] ?? null})
      const r = folder === dir ? null : REHEARSAL_FILE.exec(n)
      if (r) found.push({file: path.join(folder, n), kind: 'rehearsal', run: r[1]})
    }
  }
  return found
}

/** Run ids that have a session on the server (a run that is still alive). */
export async function liveRuns(admin: Querier): Promise<Set<string>> {
  const rows = await admin<{app: string}[]>`select distinct application_name as app from pg_stat_activity where starts_with(application_name, 'nself-e2ee-')`
  return new Set(rows.flatMap((r) => /^nself-e2ee-([0-9a-f]+)/.exec(r.app)?.[1] ?? []))
}

/**
 * Remove what earlier, interrupted commands left behind for this database. Only while holding its command lock.
 * Returns what was removed; what is not provably ours is named in the log and left.
 */
export async function sweepLeftovers(lock: CommandLock, backupDir: string | undefined, log: (line: string) => void): Promise<string[]> {
  lock.assertHeld()
  const removed: string[] = []
  for (const d of await leftoverDatabases(lock.admin, lock.database)) {
    if (d.kept || d.run === RUN_ID) continue
    if (d.foreignSessions > 0) {
      log(
        d.kind === 'dryrun'
          ? messages.getMessage('info.NotDroppingDryRun', [d.name, d.foreignSessions])
          : messages.getMessage('info.NotDroppingRollback', [d.name, d.foreignSessions]),
      )
      continue
    }
    await dropDatabase(lock.admin, d.name)
    removed.push(d.name)
    log(d.kind === 'dryrun' ? messages.getMessage('info.DroppedDryRun', [d.name, d.comment]) : messages.getMessage('info.DroppedRollback', [d.name, d.comment]))
  }
  if (backupDir) {
    const partials = await leftoverPartials(backupDir)
    const alive = partials.some((p) => p.run) ? await liveRuns(lock.admin) : new Set<string>()
    for (const p of partials) {
      if (!p.run || p.run === RUN_ID || alive.has(p.run)) continue
      await fs.rm(p.file, {force: true})
      removed.push(p.file)
      log(p.kind === 'rehearsal' ? messages.getMessage('info.RemovedRehearsal', [p.file, p.run]) : messages.getMessage('info.RemovedPartial', [p.file, p.run]))
    }
  }
  return removed
}

export interface ConnectionState {
  exists: boolean
  allowConnections: boolean
}

export async function connectionState(admin: Querier, database: string): Promise<ConnectionState> {
  const rows = await admin<{allow: boolean}[]>`select datallowconn as allow from pg_database where datname = ${database}`
  return {allowConnections: rows[0]?.allow ?? false, exists: rows.length > 0}
}

/**
 * A target left refusing connections by an interrupted swap is opened again (only with proof: a restored copy
 * of ours beside it, and no command running on it, which the caller's lock shows). Returns the sentence to say.
 */
export async function repairClosedDatabase(admin: Sql, database: string): Promise<string | null> {
  const state = await connectionState(admin, database)
  if (!state.exists || state.allowConnections) return null
  const restores = (await leftoverDatabases(admin, database)).filter((d) => d.kind === 'restore')
  if (restores.length === 0) {
    throw new UserError(messages.getMessage('error.ClosedUnexplained', [database]), {
      hint: messages.getMessage('error.ClosedUnexplained.hint', [quoteIdent(database)]),
    })
  }
  await admin.unsafe(`ALTER DATABASE ${quoteIdent(database)} WITH ALLOW_CONNECTIONS true`)
  return messages.getMessage('info.Repaired', [database, restores.map((r) => r.name).join(', ')])
}
