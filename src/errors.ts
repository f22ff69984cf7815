import {activeScope} from './run/signals.js'
import {loadMessages} from './messages.js'

const messages = loadMessages('lib.errors')

/**
 * Errors meant for the operator. Every failure the commands report is a UserError: one sentence that names
 * the thing at fault, and a hint saying what to do. Anything else is translated by `toUserError` so no raw
 * stack trace ever reaches the terminal (use --verbose or DEBUG=nself* to see the cause).
 */
export class UserError extends Error {
  readonly hint?: string
  readonly exitCode: number

  constructor(message: string, options: {hint?: string; cause?: unknown; exitCode?: number} = {}) {
    // Sentences are built from parts that may end in a full stop themselves: never "run..".
    super(message.replace(/(?<!\.)\.\.$/, '.'), {cause: options.cause})
    this.name = 'UserError'
    this.hint = options.hint
    this.exitCode = options.exitCode ?? 1
  }
}

/** Which signal stopped the run: the running command's root scope knows (src/run/signals.ts routes signals to it). */
function interruptedBy(): NodeJS.Signals | undefined {
  return activeScope()?.interruptedBy
}

export function wasInterrupted(): boolean {
  return interruptedBy() !== undefined
}

/** "Ctrl+C" or "SIGTERM", and the shell's exit code for it: 128 + the signal number (130 SIGINT, 143 SIGTERM). */
export function interruption(): {by: string; exitCode: number} {
  return interruptedBy() === 'SIGTERM' ? {by: 'SIGTERM', exitCode: 143} : {by: 'Ctrl+C', exitCode: 130}
}

/**
 * The run stopped on the operator's request (Ctrl+C or SIGTERM). `what` names the step; `outcome` says what is
 * true afterwards (default: the step's own cleanup ran, which each step guarantees for what it started).
 */
export class CancelledError extends UserError {
  constructor(what = messages.getMessage('error.Cancelled.what'), outcome = messages.getMessage('error.Cancelled.outcome'), hint?: string) {
    const {by, exitCode} = interruption()
    super(messages.getMessage('error.Cancelled', [by, what, outcome]), {exitCode, hint})
    this.name = 'CancelledError'
  }
}

/** A CancelledError with a whole sentence of its own (the runner's account of what it undid). */
export function interrupted(sentence: string, hint?: string): CancelledError {
  const e = new CancelledError()
  return Object.assign(e, {hint, message: sentence})
}

/** The server ended our session or went away: the connection cannot be used again. */
export function isConnectionLost(error: unknown): boolean {
  const e = error as {code?: string; errno?: string; message?: string} | undefined
  const code = e?.code ?? e?.errno
  if (
    code
    && ['CONNECTION_CLOSED', 'CONNECTION_DESTROYED', 'CONNECTION_ENDED', 'ECONNRESET', 'EPIPE', '57P01', '57P02', '57P03', '08006', '08003', '08000'].includes(
      code,
    )
  )
    return true
  return error instanceof TypeError && /reading 'write'/.test(String(e?.message))
}

interface PgLikeError {
  code?: string
  message?: string
  detail?: string
  hint?: string
  address?: string
  port?: number
  errno?: string
  severity?: string
}

/** Turn any thrown value into a UserError whose message is one clear sentence. */
export function toUserError(err: unknown, context?: string): UserError {
  if (err instanceof UserError) return err
  const e = (err ?? {}) as PgLikeError
  const where = context ? `${context}: ` : ''
  const code = e.code ?? e.errno
  switch (code) {
    case 'ECONNREFUSED':
      return new UserError(messages.getMessage('error.ConnectionRefused', [where, e.address ?? '?', e.port ?? '?']), {
        hint: messages.getMessage('error.ConnectionRefused.hint'),
        cause: err,
      })
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new UserError(messages.getMessage('error.HostNotFound', [where]), {hint: messages.getMessage('error.HostNotFound.hint'), cause: err})
    case 'CONNECT_TIMEOUT':
      return new UserError(messages.getMessage('error.ConnectTimeout', [where]), {hint: messages.getMessage('error.ConnectTimeout.hint'), cause: err})
    case '28P01':
    case '28000':
      return new UserError(messages.getMessage('error.LoginRefused', [where, String(e.message)]), {
        hint: messages.getMessage('error.LoginRefused.hint'),
        cause: err,
      })
    case '3D000':
      return new UserError(`${where}${e.message}.`, {hint: messages.getMessage('error.NoDatabase.hint'), cause: err})
    case '42501':
      return new UserError(messages.getMessage('error.PermissionDenied', [where, String(e.message)]), {
        hint: messages.getMessage('error.PermissionDenied.hint'),
        cause: err,
      })
    case 'CONNECTION_CLOSED':
    case 'CONNECTION_DESTROYED':
    case 'CONNECTION_ENDED':
    case 'ECONNRESET':
    case 'EPIPE':
    case '57P01':
    case '57P02':
    case '57P03':
      return new UserError(
        e.code?.startsWith('57')
          ? messages.getMessage('error.ConnectionLost.serverEnded', [where, String(e.message)])
          : messages.getMessage('error.ConnectionLost', [where]),
        {
          hint: messages.getMessage('error.ConnectionLost.hint'),
          cause: err,
        },
      )
    case '57014':
      return new UserError(messages.getMessage('error.StatementCancelled', [where, String(e.message)]), {cause: err})
    default:
      break
  }

  if (e.severity && e.message) {
    const message = e.detail
      ? messages.getMessage('error.Postgres.withDetail', [where, String(e.code), e.message, e.detail])
      : messages.getMessage('error.Postgres', [where, String(e.code), e.message])
    return new UserError(message, {hint: e.hint, cause: err})
  }

  const message = err instanceof Error ? err.message : String(err)
  return new UserError(`${where}${message.replace(/\.$/, '')}.`, {cause: err})
}

/**
 * The one line of a failure worth showing inside a sentence, without its closing full stop: a UserError's
 * sentence, a PostgreSQL error or a lost connection as `toUserError` words it, or from a tool's stderr the
 * line that says "error:" (pg_dump, pg_restore and psql print progress and warnings before it; else the
 * tool's last line), without the tool's "pg_restore: error: " prefix.
 */
export function firstLine(error: unknown): string {
  if (error instanceof UserError) return error.message.replace(/\.$/, '')
  const e = error as {stderr?: unknown; shortMessage?: string; message?: string; severity?: string} | undefined
  // A child process (it has stderr) that died of EPIPE lost its pipe, not the connection to PostgreSQL.
  const lostConnection = typeof e?.stderr !== 'string' && isConnectionLost(error)
  if (e?.severity || lostConnection) return toUserError(error).message.replace(/\.$/, '')
  const stderr = typeof e?.stderr === 'string' ? e.stderr : ''
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
  const errorLine = lines.find((l) => /(^|: )(error|fatal):/i.test(l)) ?? lines.at(-1)
  const text = errorLine ?? e?.shortMessage ?? e?.message ?? String(error)
  return text
    .split('\n')[0]
    .replace(/^(pg_dump|pg_restore|psql): (error: )?/, '')
    .replace(/\.$/, '')
    .trim()
}
