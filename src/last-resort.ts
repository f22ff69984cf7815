import {cancel} from './cancel.js'
import {interruption, isConnectionLost, toUserError, UserError, wasInterrupted} from './errors.js'

/**
 * The last line of defence: an exception nothing caught (postgres.js 3.4.9 throws one from a setImmediate when a
 * dead connection is written to, porsager/postgres 1199/1208) or a rejection nobody handled. It still ends as one
 * sentence and a non-zero exit, after the run's cancel handlers (children, clones, partial files) and the
 * registered undo (which opens fresh connections) have run.
 */
type Undo = () => Promise<string>

const undos = new Set<Undo>()
let installed = false
let handling = false

/** While the returned function is not called, a crash runs `undo` (it returns the sentence saying what it did). */
export function registerUndo(undo: Undo): () => void {
  undos.add(undo)
  return () => undos.delete(undo)
}

/** True once a crash is being handled: the normal error path then leaves the report to it. */
export function lastResortActive(): boolean {
  return handling
}

export function installLastResort(): void {
  if (installed) return
  installed = true
  process.on('uncaughtException', (error) => void onFatal(error))
  process.on('unhandledRejection', (reason) => void onFatal(reason))
}

async function onFatal(error: unknown): Promise<void> {
  if (handling) return
  handling = true
  const verbose = process.argv.includes('--verbose') || Boolean(process.env.DEBUG)
  // After Ctrl+C, a connection that dies is the cancel's doing (a dropped clone, a terminated child session).
  const ue = wasInterrupted()
    ? new UserError(`Interrupted by ${interruption().by}: the run was stopped`, {cause: error, exitCode: interruption().exitCode})
    : isConnectionLost(error)
    ? new UserError('The connection to PostgreSQL was lost (the server ended this tool\'s session, restarted, or the network failed), so the run stopped.', {cause: error})
    : toUserError(error)
  const told: string[] = []
  await Promise.race([cancel(), new Promise((resolve) => setTimeout(resolve, 15_000).unref())])
  for (const undo of [...undos].reverse()) {
    try {
      told.push(await undo())
    } catch (undoError) {
      told.push(`undoing what this run applied failed: ${toUserError(undoError).message.replace(/\.$/, '')}`)
    }
  }
  const message = `${ue.message.replace(/\.$/, '')}${told.length > 0 ? `; ${told.join('; ')}` : ''}.`
  if (process.argv.includes('--json')) process.stdout.write(JSON.stringify({error: {hint: ue.hint, message}, ok: false}, null, 2) + '\n')
  process.stderr.write(`Error: ${message}\n`)
  process.stderr.write(`  ${ue.hint ?? 'Run `nself db e2ee status` to see where the database stands; running the same command again continues from there.'}\n`)
  if (verbose) process.stderr.write(`\n${(error as Error)?.stack ?? String(error)}\n`)
  process.exit(ue.exitCode === 0 ? 1 : ue.exitCode)
}
