import {Command, Flags, type Interfaces} from '@oclif/core'

import {toUserError, UserError} from './errors.js'
import {installLastResort} from './last-resort.js'
import {loadMessages} from './messages.js'
import {setProgressInterval} from './pipeline/log-renderer.js'
import {resolveTarget, type Target} from './connection/target.js'
import {createRunScope, loggerOf, type RootScope, type RunScope} from './run/scope.js'
import {installSignalHandlers} from './run/signals.js'

const messages = loadMessages('base')

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>

/** What a command prints with --json when it fails (stdout; the sentence and hint also go to stderr). */
export interface ErrorResult {
  error: {hint?: string; message: string}
  ok: false
}

/**
 * How every command finds the database: the same flags everywhere (flags > env files > PG* > defaults).
 * A command is typed by its result (`class Migrate extends BaseCommand<MigrateResult>`, as the Salesforce CLI's
 * `SfCommand<T>`): `run()` returns it, oclif prints it as the one JSON document on stdout under --json
 * (`enableJsonFlag`), and the command prints its human summary only without --json.
 */
export abstract class BaseCommand<T = unknown> extends Command {
  static enableJsonFlag = true
  // oclif adds its own `json` flag (enableJsonFlag); declaring it here keeps our description in the help and manifests.
  static baseFlags = {
    container: Flags.string({description: messages.getMessage('flags.container.description'), helpGroup: 'CONNECTION'}),
    database: Flags.string({char: 'd', description: messages.getMessage('flags.database.description'), helpGroup: 'CONNECTION'}),
    'nself-env-file': Flags.string({description: messages.getMessage('flags.nself-env-file.description'), helpGroup: 'CONNECTION'}),
    host: Flags.string({description: messages.getMessage('flags.host.description'), helpGroup: 'CONNECTION'}),
    json: Flags.boolean({default: false, description: messages.getMessage('flags.json.description')}),
    local: Flags.boolean({default: false, description: messages.getMessage('flags.local.description'), helpGroup: 'CONNECTION'}),
    port: Flags.integer({description: messages.getMessage('flags.port.description'), helpGroup: 'CONNECTION', max: 65_535, min: 1}),
    'project-dir': Flags.string({default: '.', description: messages.getMessage('flags.project-dir.description'), helpGroup: 'CONNECTION'}),
    schema: Flags.string({description: messages.getMessage('flags.schema.description'), helpGroup: 'CONNECTION'}),
    user: Flags.string({char: 'U', description: messages.getMessage('flags.user.description'), helpGroup: 'CONNECTION'}),
    verbose: Flags.boolean({default: false, description: messages.getMessage('flags.verbose.description')}),
    yes: Flags.boolean({char: 'y', default: false, description: messages.getMessage('flags.yes.description')}),
  }

  protected verbose = false
  /**
   * This command's root scope: Ctrl+C and SIGTERM reach it (src/run/signals.ts), a crash runs its handlers and
   * undo (src/last-resort.ts), and what the command opens is closed with it when the command ends. Notes
   * outside the step list go to stderr, so `--json` keeps stdout to the document.
   */
  protected readonly scope: RootScope = createRunScope({log: loggerOf((line) => process.stderr.write(`${line}\n`))})

  /** --json, as oclif reads it (`jsonEnabled()`); the pipelines are told, to keep their progress off stdout. */
  protected get jsonMode(): boolean {
    return this.jsonEnabled()
  }

  abstract run(): Promise<T>

  protected async parseBase<T extends typeof Command>(cmd: T): Promise<BaseFlags<T>> {
    installSignalHandlers(this.scope)
    installLastResort()
    let flags: unknown
    try {
      ;({flags} = await this.parse(cmd))
    } catch (error) {
      // Anything the parser refuses (unknown flag, bad value, a flag twice) is a usage error: exit 2.
      const sentence = (error as Error).message
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l && !/^See more help/.test(l))
        .join(': ')
        .replace(/\.$/, '')
      throw new UserError(`${sentence}.`, {cause: error, exitCode: 2, hint: messages.getMessage('error.Usage.hint')})
    }
    const f = flags as BaseFlags<T>
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

  /** Human output: none in --json mode, so stdout holds only the document. */
  protected say(line: string): void {
    if (this.jsonMode) return
    process.stdout.write(`${line}\n`)
  }

  /**
   * How oclif writes the --json document (the result `run` returned, or `toErrorJson`'s): indented by 2 spaces,
   * bigint values (counts from PostgreSQL) as strings, and no colours (oclif would colour it on a terminal).
   */
  protected logJson(json: unknown): void {
    process.stdout.write(`${JSON.stringify(json, replacer, 2)}\n`)
  }

  protected toErrorJson(err: unknown): ErrorResult {
    const ue = toUserError(err)
    return {error: {hint: ue.hint, message: ue.message}, ok: false}
  }

  async catch(err: Error & {exitCode?: number; oclif?: {exit?: number}}): Promise<void> {
    // oclif's own exit (this.exit) and help requests pass through.
    if (err.oclif?.exit !== undefined && !(err instanceof UserError) && /EEXIT/.test(String((err as {code?: string}).code))) throw err
    // A crash is being reported (and undone) by the last-resort handler, which exits: do not speak twice.
    if (this.scope.crashing) await new Promise(() => {})
    const ue = toUserError(err)
    // Also when the flags could not be parsed: jsonEnabled() reads --json from argv.
    if (this.jsonEnabled()) this.logJson(this.toErrorJson(ue))
    process.stderr.write(`${messages.getMessage('error.Failed', [ue.message])}\n`)
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
