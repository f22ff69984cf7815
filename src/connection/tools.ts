import {randomBytes} from 'node:crypto'
import path from 'node:path'
import {execa, type Options, type ResultPromise} from 'execa'

import {CancelledError, firstLine, UserError} from '../errors.js'
import {APP_NAME} from './connect.js'
import type {Target} from './target.js'
import {createRunScope, type RunScope} from '../run/scope.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.connection.tools')

export type PgTool = 'pg_dump' | 'pg_restore' | 'psql'

export interface RunOptions {
  /**
   * The application_name the tool's server session carries (default APP_NAME). Give a child its own name,
   * e.g. `${APP_NAME}-dump`, so a cancel can end exactly that session without touching this process's pool.
   */
  appName?: string
}

export interface Invocation {
  file: string
  args: string[]
  /** Values only ever travel in the environment; argv carries at most the variable names. */
  env: Record<string, string>
}

/**
 * Runs PostgreSQL's client tools where the operator's setup has them: inside the nself postgres container
 * through `docker exec -i` (never -t: a TTY mangles binary dumps), or on this machine with --local.
 */
export class PgTools {
  private constructor(
    readonly target: Target,
    readonly scope: RunScope,
    readonly container?: string,
  ) {}

  /** The tools for `target`; the children they start are killed when `scope` is cancelled. */
  static async create(target: Target, scope: RunScope = createRunScope()): Promise<PgTools> {
    if (target.mode === 'local') return new PgTools(target, scope)
    return new PgTools(target, scope, await findContainer(target.containerCandidates))
  }

  describe(): string {
    return this.container ? messages.getMessage('where.container', [this.container]) : messages.getMessage('where.local')
  }

  /**
   * The argv for `tool args…` connected to `database`, in this mode. `database` null: no connection
   * arguments at all (for `pg_restore --list` or `pg_restore -f`, which read an archive without a server).
   */
  invocation(tool: PgTool, args: string[], database: string | null, runOptions: RunOptions = {}): Invocation {
    const {conn} = this.target
    const env: Record<string, string> = {PGAPPNAME: runOptions.appName ?? APP_NAME}
    if (conn.password) env.PGPASSWORD = conn.password
    if (this.container) {
      // Inside the container the tools reach the server on its own socket; only the user and database matter.
      const envNames = Object.keys(env).flatMap((k) => ['-e', k])
      const connArgs = database === null ? [] : ['-U', conn.user, '-d', database]
      return {args: ['exec', '-i', ...envNames, this.container, tool, ...connArgs, ...args], env, file: 'docker'}
    }
    const connArgs = database === null ? [] : ['-h', conn.host, '-p', String(conn.port), '-U', conn.user, '-d', database]
    return {args: [...connArgs, ...args], env, file: tool}
  }

  /** Start a tool; on Ctrl+C the child is killed (the server session it opened is ended by the caller). */
  run(tool: PgTool, args: string[], database: string | null, options: Options = {}, runOptions: RunOptions = {}): ResultPromise {
    const inv = this.invocation(tool, args, database, runOptions)
    const child = execa(inv.file, inv.args, {env: inv.env, extendEnv: true, reject: true, stripFinalNewline: true, ...options})
    const dispose = this.scope.onCancel(() => {
      child.kill('SIGTERM')
    })
    child.finally(dispose).catch(() => {})
    return child
  }

  private readonly majors = new Map<PgTool, Promise<number>>()

  /** Major version of a client tool where it runs (container or here); asked once per tool. */
  toolMajor(tool: PgTool): Promise<number> {
    let major = this.majors.get(tool)
    if (!major) {
      major = this.askMajor(tool)
      major.catch(() => this.majors.delete(tool))
      this.majors.set(tool, major)
    }
    return major
  }

  private async askMajor(tool: PgTool): Promise<number> {
    const inv = this.container ? {args: ['exec', '-i', this.container, tool, '--version'], file: 'docker'} : {args: ['--version'], file: tool}
    try {
      const {stdout} = await execa(inv.file, inv.args)
      const m = /(\d+)(?:\.(\d+))?/.exec(stdout)
      if (!m) throw new Error(`unexpected output "${stdout}"`)
      return Number(m[1])
    } catch (error) {
      // Ctrl+C on a terminal reaches the child too: its death is the interruption, not a broken tool.
      if (this.scope.cancelled) throw new CancelledError(`checking ${tool}`, 'nothing was changed')
      if ((error as {code?: string}).code === 'ENOENT') {
        throw new UserError(messages.getMessage('error.tool-missing', [tool]), {hint: messages.getMessage('hint.tool-missing')})
      }
      throw new UserError(messages.getMessage('error.cannot-run', [tool, this.describe(), firstLine(error)]))
    }
  }

  /**
   * Make a local file readable by the tools. In docker mode the file is copied into the container's /tmp
   * (pg_restore -j needs a seekable file, not stdin). Returns the path the tool should use and a cleanup.
   */
  /** Run a plain command where the tools run (in the container, or here). */
  exec(argv: string[]): ResultPromise {
    return this.container ? execa('docker', ['exec', '-i', this.container, ...argv]) : execa(argv[0], argv.slice(1))
  }

  async provide(localPath: string): Promise<{path: string; cleanup: () => Promise<void>}> {
    const container = this.container
    if (!container) return {cleanup: async () => {}, path: localPath}
    const remote = `/tmp/nself-e2ee-${randomBytes(4).toString('hex')}-${path.basename(localPath)}`
    try {
      await execa('docker', ['cp', localPath, `${container}:${remote}`])
    } catch (error) {
      throw new UserError(messages.getMessage('error.cannot-copy', [localPath, container, firstLine(error)]))
    }
    return {
      cleanup: async () => {
        await execa('docker', ['exec', '-i', container, 'rm', '-f', remote]).catch(() => {})
      },
      path: remote,
    }
  }
}

async function findContainer(candidates: string[]): Promise<string> {
  const tried: string[] = []
  for (const name of candidates) {
    try {
      const {stdout} = await execa('docker', ['inspect', '--format', '{{.State.Running}}', name])
      if (stdout.trim() === 'true') return name
      tried.push(messages.getMessage('tried.not-running', [name]))
    } catch (error) {
      if ((error as {code?: string}).code === 'ENOENT') {
        throw new UserError(messages.getMessage('error.docker-missing'), {hint: messages.getMessage('hint.docker-missing')})
      }
      if (/Cannot connect to the Docker daemon|Is the docker daemon running|error during connect/i.test(firstLine(error))) {
        throw new UserError(messages.getMessage('error.docker-unreachable', [firstLine(error), name]), {
          hint: messages.getMessage('hint.docker-unreachable'),
        })
      }
      tried.push(messages.getMessage('tried.not-found', [name]))
    }
  }
  throw new UserError(messages.getMessage('error.no-container', [tried.join(', ')]), {hint: messages.getMessage('hint.no-container')})
}

export interface ToolReport {
  /** "local client tools" or "docker exec in container NAME". */
  where: string
  /** Major version of each tool; null where it is missing or cannot run. */
  versions: Record<PgTool, number | null>
  /** Why no tools could be reached at all (no docker, no running container), when that is so. */
  problem?: string
}

/** The client tools' versions for `status`: never throws, a missing tool is reported as such. */
export async function reportTools(target: Target): Promise<ToolReport> {
  const none = {pg_dump: null, pg_restore: null, psql: null}
  let tools: PgTools
  try {
    tools = await PgTools.create(target)
  } catch (error) {
    return {problem: (error as Error).message.replace(/\.$/, ''), versions: none, where: `docker exec (${target.containerCandidates.join(' or ')})`}
  }
  const versions: Record<PgTool, number | null> = {...none}
  for (const tool of Object.keys(none) as PgTool[]) versions[tool] = await tools.toolMajor(tool).catch(() => null)
  return {versions, where: tools.describe()}
}
