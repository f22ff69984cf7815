/**
 * Errors meant for the operator. Every failure the commands report is a UserError: one sentence that names
 * the thing at fault, and a hint saying what to do. Anything else is translated by `toUserError` so no raw
 * stack trace ever reaches the terminal (use --verbose or DEBUG=nself* to see the cause).
 */
export class UserError extends Error {
  readonly hint?: string
  readonly exitCode: number

  constructor(message: string, options: {hint?: string; cause?: unknown; exitCode?: number} = {}) {
    super(message, {cause: options.cause})
    this.name = 'UserError'
    this.hint = options.hint
    this.exitCode = options.exitCode ?? 1
  }
}

/** Ctrl+C: the run stopped on the operator's request; exit 130 as shells expect. */
export class CancelledError extends UserError {
  constructor(what = 'the run') {
    super(`Interrupted: ${what} was stopped by Ctrl+C and everything it had started was undone.`, {exitCode: 130})
    this.name = 'CancelledError'
  }
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
      return new UserError(`${where}cannot connect to PostgreSQL at ${e.address ?? '?'}:${e.port ?? '?'} (connection refused).`, {
        hint: 'Is the server running and is --host/--port (or POSTGRES_PORT in the nself env) right?', cause: err,
      })
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new UserError(`${where}cannot resolve the database host.`, {hint: 'Check --host or POSTGRES_HOST.', cause: err})
    case 'CONNECT_TIMEOUT':
      return new UserError(`${where}timed out connecting to PostgreSQL.`, {hint: 'Check --host/--port and the firewall.', cause: err})
    case '28P01':
    case '28000':
      return new UserError(`${where}PostgreSQL refused the login: ${e.message}.`, {
        hint: 'Set POSTGRES_PASSWORD in the nself env file or PGPASSWORD; passwords are never taken from flags.', cause: err,
      })
    case '3D000':
      return new UserError(`${where}${e.message}.`, {hint: 'Check --database or POSTGRES_DB.', cause: err})
    case '42501':
      return new UserError(`${where}permission denied: ${e.message}.`, {
        hint: 'Run as the database owner or a superuser (POSTGRES_USER of the nself project).', cause: err,
      })
    case '57014':
      return new UserError(`${where}the statement was cancelled (${e.message}).`, {cause: err})
    default:
      break
  }

  if (e.severity && e.message) {
    const detail = e.detail ? ` (${e.detail})` : ''
    return new UserError(`${where}PostgreSQL error ${e.code}: ${e.message}${detail}.`, {hint: e.hint, cause: err})
  }

  const message = err instanceof Error ? err.message : String(err)
  return new UserError(`${where}${message.replace(/\.$/, '')}.`, {cause: err})
}
