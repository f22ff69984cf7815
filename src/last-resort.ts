import {interruption, isConnectionLost, toUserError, UserError, wasInterrupted} from './errors.js'
import {activeScope} from './run/signals.js'
import {loadMessages} from './messages.js'

const messages = loadMessages('lib.last-resort')

/**
 * The last line of defence: an exception nothing caught (postgres.js 3.4.9 throws one from a setImmediate when a
 * dead connection is written to, porsager/postgres 1199/1208) or a rejection nobody handled. It still ends as one
 * sentence and a non-zero exit, after the running command's root scope has run its cancel handlers (children,
 * clones, partial files) and the undo registered with it (`registerCrashUndo`, which opens fresh connections).
 * The process hook is installed once; the scope it speaks to is the one src/run/signals.ts routes signals to.
 */
let installed = false

export function installLastResort(): void {
  if (installed) return
  installed = true
  process.on('uncaughtException', (error) => void onFatal(error))
  process.on('unhandledRejection', (reason) => void onFatal(reason))
}

/** The sentence for a connection lost under us, naming the step that was running when there was one. */
function connectionLost(step: string | undefined): string {
  return step === undefined ? messages.getMessage('error.ConnectionLost') : messages.getMessage('error.ConnectionLost.inStep', [step])
}

async function onFatal(error: unknown): Promise<void> {
  const scope = activeScope()
  const verbose = process.argv.includes('--verbose') || Boolean(process.env.DEBUG)
  // After Ctrl+C, a connection that dies is the cancel's doing (a dropped clone, a terminated child session).
  const ue = wasInterrupted()
    ? new UserError(messages.getMessage('error.Interrupted', [interruption().by]), {cause: error, exitCode: interruption().exitCode})
    : isConnectionLost(error)
      ? new UserError(connectionLost(scope?.runningStep), {cause: error})
      : toUserError(error)
  // Only the first crash reports (the scope's cancel handlers and undo run once); without a scope nothing awaits here.
  const told = scope ? await scope.crash() : []
  if (told === undefined) return
  const message = `${ue.message.replace(/\.$/, '')}${told.length > 0 ? `; ${told.join('; ')}` : ''}.`
  if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify({error: {hint: ue.hint, message}, ok: false}, null, 2)}\n`)
  process.stderr.write(`${messages.getMessage('error.Crash', [message])}\n`)
  process.stderr.write(`  ${ue.hint ?? messages.getMessage('error.Crash.hint')}\n`)
  if (verbose) process.stderr.write(`\n${(error as Error)?.stack ?? String(error)}\n`)
  process.exit(ue.exitCode === 0 ? 1 : ue.exitCode)
}
