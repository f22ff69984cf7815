import {acquireCommandLock, type CommandLock, type CommandName, commandLockHolder, connectMaintenance, describeHolder} from '../migrations/command-lock.js'
import type {Sql} from '../connection/connect.js'
import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import type {RunScope} from '../run/scope.js'
import {
  connectionState,
  leftoverDatabases,
  type LeftoverDatabase,
  type LeftoverFile,
  leftoverPartials,
  liveRuns,
  repairClosedDatabase,
  sweepLeftovers,
} from '../steps/leftovers.js'

const messages = loadMessages('lib.pipeline.command')

/** Notes for the operator outside the step list: stderr, so `--json` keeps stdout to the document. */
export function note(line: string): void {
  process.stderr.write(`${line}\n`)
}

/**
 * The start of every command that changes a database: take the command lock of the scope's target (waiting up
 * to `waitMs` for another command), re-open a target an interrupted swap left closed, and remove what
 * interrupted commands left behind. The scope releases the lock when it closes (after what it opened later),
 * also on failure; notes go to the scope's logger.
 */
export async function beginChangingCommand(scope: RunScope, o: {command: CommandName; waitMs: number}): Promise<CommandLock> {
  const {target} = scope
  const log = (line: string) => scope.log.info(line)
  const lock = await acquireCommandLock(target, {command: o.command, log, signal: scope.signal, waitMs: o.waitMs})
  scope.defer(() => lock.release())
  const repaired = await repairClosedDatabase(lock.admin, lock.database)
  if (repaired) log(repaired)
  await sweepLeftovers(lock, target.backupDir, log)
  return lock
}

export interface ReadingState {
  repaired: string | null
  databases: LeftoverDatabase[]
  partials: Array<LeftoverFile & {owner: 'running' | 'gone' | 'unknown'}>
  /** The command currently changing the database, if any, and its run id. */
  busy: {command: string; run: string | null} | null
}

/**
 * Before a read-only command (status, verify) connects: a target left closed by an interrupted swap is repaired
 * (when no command holds its lock), and what interrupted commands left behind is listed. Best effort: when the
 * maintenance database cannot be reached, nothing is checked.
 */
export async function checkBeforeReading(scope: RunScope, command: CommandName): Promise<ReadingState | null> {
  const {target} = scope
  return scope.child(async (reading) => {
    let admin: Sql
    try {
      admin = reading.own((await connectMaintenance(target, {max: 1})).sql)
    } catch {
      return null
    }
    const database = target.conn.database
    const holder = await commandLockHolder(admin, database)
    let repaired: string | null = null
    const state = await connectionState(admin, database)
    if (state.exists && !state.allowConnections) {
      if (holder) {
        throw new UserError(messages.getMessage('error.RefusesConnections', [database, describeHolder(holder)]), {
          hint: messages.getMessage('error.RefusesConnections.hint'),
        })
      }
      const lock = await acquireCommandLock(target, {command, tryOnly: true, waitMs: 0})
      if (lock) {
        try {
          repaired = await repairClosedDatabase(lock.admin, database)
        } finally {
          await lock.release()
        }
      }
    }
    const databases = await leftoverDatabases(admin, database)
    const files = await leftoverPartials(target.backupDir)
    const alive = files.length > 0 ? await liveRuns(admin) : new Set<string>()
    const partials = files.map((f) => ({...f, owner: f.run === null ? ('unknown' as const) : alive.has(f.run) ? ('running' as const) : ('gone' as const)}))
    return {busy: holder ? {command: describeHolder(holder), run: holder.run} : null, databases, partials, repaired}
  })
}
