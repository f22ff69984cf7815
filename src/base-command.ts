import {Command, Flags, type Interfaces} from '@oclif/core'

import {toUserError, UserError} from './errors.js'
import {installLastResort} from './last-resort.js'
import {setProgressInterval} from './pipeline/log-renderer.js'
import {resolveTarget, type Target} from './connection/target.js'
import {createRunScope, loggerOf, type RootScope, type RunScope} from './run/scope.js'
import {installSignalHandlers} from './run/signals.js'

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>

/** How every command finds the database: the same flags everywhere (flags > env files > PG* > defaults). */
export abstract class BaseCommand extends Command {
  static baseFlags = {
    container: Flags.string({description: 'Postgres container for pg_dump/pg_restore (default ${PROJECT_NAME}_postgres, then nself-postgres).', helpGroup: 'CONNECTION'}),
    database: Flags.string({char: 'd', description: 'Database name (default POSTGRES_DB from the nself env).', helpGroup: 'CONNECTION'}),
    'nself-env-file': Flags.string({description: 'An extra env file read after nself\'s cascade (.env, .env.<ENV>, .env.secrets, .env.local); it wins over them and the environment.', helpGroup: 'CONNECTION'}),
    host: Flags.string({description: 'Server host for SQL (default POSTGRES_HOST, PGHOST, 127.0.0.1).', helpGroup: 'CONNECTION'}),
    json: Flags.boolean({default: false, description: 'Print one JSON document on stdout and nothing else.'}),
    local: Flags.boolean({default: false, description: 'Run pg_dump/pg_restore on this machine instead of docker exec.', helpGroup: 'CONNECTION'}),
    port: Flags.integer({description: 'Server port (default POSTGRES_PORT, PGPORT, 5432).', helpGroup: 'CONNECTION', max: 65_535, min: 1}),
    'project-dir': Flags.string({default: '.', description: 'nself project root holding the .env files (its backend/ folder when that has a .env, as nself does).', helpGroup: 'CONNECTION'}),
    schema: Flags.string({description: 'Schema holding the nChat tables (default: where nchat_users is).', helpGroup: 'CONNECTION'}),
    user: Flags.string({char: 'U', description: 'Database user (default POSTGRES_USER, PGUSER, postgres).', helpGroup: 'CONNECTION'}),
    verbose: Flags.boolean({default: false, description: 'Show the underlying cause of errors.'}),
    yes: Flags.boolean({char: 'y', default: false, description: 'Answer yes to confirmations (required without a terminal).'}),
  }

  protected jsonMode = false
  protected verbose = false
  /**
   * This command's root scope: Ctrl+C and SIGTERM reach it (src/run/signals.ts), a crash runs its handlers and
   * undo (src/last-resort.ts), and what the command opens is closed with it when the command ends. Notes
   * outside the step list go to stderr, so `--json` keeps stdout to the document.
   */
  protected readonly scope: RootScope = createRunScope({log: loggerOf((line) => process.stderr.write(`${line}\n`))})

  protected async parseBase<T extends typeof Command>(cmd: T): Promise<BaseFlags<T>> {
    installSignalHandlers(this.scope)
    installLastResort()
    let flags
    try {
      ;({flags} = await this.parse(cmd))
    } catch (error) {
      // Anything the parser refuses (unknown flag, bad value, a flag twice) is a usage error: exit 2.
      const sentence = (error as Error).message.split('\n').map((l) => l.trim()).filter((l) => l && !/^See more help/.test(l)).join(': ').replace(/\.$/, '')
      throw new UserError(`${sentence}.`, {cause: error, exitCode: 2, hint: 'See --help.'})
    }
    const f = flags as BaseFlags<T>
    this.jsonMode = Boolean(f.json)
    this.verbose = Boolean(f.verbose) || Boolean(process.env.DEBUG)
    const interval = (f as {'progress-interval'?: number})['progress-interval']
    if (interval !== undefined) setProgressInterval(interval)
    return f
  }

  /** The command's scope, working on `target`. */
  protected runScope(target: Target): RunScope {
    return this.scope.withTarget(target)
  }

  protected targetFrom(flags: BaseFlags<typeof BaseCommand>, extra: {backupDir?: string} = {}): Target {
    return resolveTarget({
      backupDir: extra.backupDir,
      container: flags.container,
      database: flags.database,
      envFile: flags['nself-env-file'],
      host: flags.host,
      local: flags.local,
      port: flags.port,
      projectDir: flags['project-dir'],
      schema: flags.schema,
      user: flags.user,
    })
  }

  /** Human output goes to stderr in --json mode so stdout holds only the document. */
  protected say(line: string): void {
    if (this.jsonMode) return
    process.stdout.write(line + '\n')
  }

  protected printJson(doc: unknown): void {
    process.stdout.write(JSON.stringify(doc, replacer, 2) + '\n')
  }

  async catch(err: Error & {exitCode?: number; oclif?: {exit?: number}}): Promise<void> {
    // oclif's own exit (this.exit) and help requests pass through.
    if (err.oclif?.exit !== undefined && !(err instanceof UserError) && /EEXIT/.test(String((err as {code?: string}).code))) throw err
    // A crash is being reported (and undone) by the last-resort handler, which exits: do not speak twice.
    if (this.scope.crashing) await new Promise(() => {})
    const ue = toUserError(err)
    if (this.jsonMode || process.argv.includes('--json')) {
      this.printJson({error: {hint: ue.hint, message: ue.message}, ok: false})
    }
    process.stderr.write(`Error: ${ue.message}\n`)
    if (ue.hint) process.stderr.write(`  ${ue.hint}\n`)
    if (this.verbose || process.argv.includes('--verbose')) {
      const cause = (ue.cause ?? err) as Error
      process.stderr.write(`\n${cause?.stack ?? String(cause)}\n`)
    }
    process.exitCode = ue.exitCode
    // What the pipeline opened was closed on the way here (the command's own pools close right after, in
    // `finally`); a socket a stuck server still holds open must not keep an interrupted or failed command alive.
    setTimeout(() => process.exit(ue.exitCode), 10_000).unref()
  }

  /** After the command (and its error report): what it opened is closed, newest first. */
  protected async finally(err: Error | undefined): Promise<unknown> {
    await this.scope.close()
    return super.finally(err)
  }
}

function replacer(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value
}
