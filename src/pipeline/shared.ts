import {Listr, type ListrTask} from 'listr2'

import {CancelledError, interrupted, interruption, isConnectionLost, toUserError, UserError} from '../errors.js'
import type {RunScope} from '../run/scope.js'
import type {Target} from '../connection/target.js'
import type {PgTools} from '../connection/tools.js'
import type {BackupInfo, BackupPurpose} from '../archive/manifest.js'
import {takeBackup} from '../steps/backup.js'
import type {DryRunOptions} from '../steps/dryrun.js'
import type {RunnerSettings} from '../migrations/runner.js'
import type {Inspection} from '../migrations/inspect.js'
import {TOUCHED_TABLES} from '../nchat/tables.js'
import {fmtBytes} from '../text.js'
import {LogRenderer, progressOf, startStepProgress} from './log-renderer.js'
import {outputMode} from './ui.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.pipeline.shared')

/** What a step's work sees of its step: the title shown when it ends, and the run's scope logging into the step. */
export interface StepTask {
  title: string
  readonly scope: RunScope
}

/**
 * The steps of a pipeline, run one after another as the pipeline's code reaches them: `run` renders the step with
 * listr2 (the terminal renderer, log lines in CI or when piped, nothing with --json) and returns what the step
 * produced; `skip` shows a step that does not run. The first failure throws out of `run`, so the pipeline stops
 * there. Ctrl+C is the scope's (src/run/), not listr2's.
 */
export class Steps {
  readonly #scope: RunScope
  readonly #mode: 'terminal' | 'log' | 'silent'

  constructor(scope: RunScope, json: boolean) {
    this.#scope = scope
    this.#mode = outputMode(json)
  }

  async run<T>(title: string, work: (task: StepTask) => Promise<T>): Promise<T> {
    const scope = this.#scope
    const mode = this.#mode
    let produced: {value: T} | undefined
    await this.#render({
      task: async (_ctx, task) => {
        // A step that finished while Ctrl+C arrived may not have looked: the next one must not start.
        if (scope.cancelled) throw notStarted(title)
        const progress = mode === 'log' ? startStepProgress(task) : null
        const leaveStep = scope.enterStep(title)
        try {
          const log = {
            info: (line: string) => {
              task.output = line
            },
            progress: progressOf(task),
          }
          const view: StepTask = {
            scope: scope.withLog(log),
            get title() {
              return String(task.title)
            },
            set title(value: string) {
              task.title = value
            },
          }
          produced = {value: await work(view)}
        } finally {
          leaveStep()
          progress?.flush()
        }
      },
      title,
    })
    if (!produced) throw new Error(`The step "${title}" ended without a result.`)
    return produced.value
  }

  /** Show `title` as skipped (with `reason`, or the title alone). */
  async skip(title: string, reason?: string): Promise<void> {
    await this.#render({skip: () => reason ?? true, task: async () => {}, title})
  }

  // biome-ignore lint/suspicious/noExplicitAny: listr2's generics name the renderers; the renderer is picked at run time, so they are left open here.
  async #render(step: ListrTask<object, any, any>): Promise<void> {
    const renderer = this.#mode === 'log' ? LogRenderer : this.#mode === 'silent' ? 'silent' : 'default'
    const options = {concurrent: false, exitOnError: true, registerSignalListeners: false, renderer}
    // biome-ignore lint/suspicious/noExplicitAny: the renderer is chosen at run time (see #render)
    await new Listr<object, any, any>([step], options as any).run({})
  }
}

function notStarted(title: string): CancelledError {
  return interrupted(messages.getMessage('error.NotStarted', [interruption().by, title]))
}

/** Run a step and record how long it took under `name`, also when it fails. */
export async function timed<T>(timings: Record<string, number>, name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now()
  try {
    return await fn()
  } finally {
    timings[name] = Date.now() - t0
  }
}

/** What the dry run gets from every pipeline that runs it: production's inspection, the run's tools and settings. */
export function rehearsalOptions(
  ins: Inspection,
  run: {jobs: number; keepDryrunDb: boolean; runner: RunnerSettings; to?: number},
  scope: RunScope,
  tools: PgTools,
): Omit<DryRunOptions, 'backup'> {
  return {
    jobs: run.jobs,
    keep: run.keepDryrunDb,
    migrations: ins.migrations,
    plan: ins.plan,
    runner: run.runner,
    scope,
    sql: ins.sql,
    target: scope.target,
    to: run.to,
    tools,
  }
}

/** A backup of production as every pipeline takes it: the tables the migrations touch counted, bytes shown. */
export function backupProduction(o: {ins: Inspection; scope: RunScope; target: Target; tools: PgTools; purpose: BackupPurpose}): Promise<BackupInfo> {
  const {log} = o.scope
  return takeBackup({
    dir: o.target.backupDir,
    ledgerVersion: o.ins.plan.current,
    log: (line) => log.info(line),
    onProgress: (bytes) => log.progress(messages.getMessage('info.BytesWritten', [fmtBytes(bytes)])),
    purpose: o.purpose,
    schema: o.ins.plan.appSchema,
    sql: o.ins.sql,
    tables: TOUCHED_TABLES,
    target: o.target,
    tools: o.tools,
  })
}

/**
 * `fn`, with a lost server connection reported as the step it stopped: "`what` could not finish: the connection
 * to PostgreSQL was lost (…); `state`." (`state` says what is true of the database afterwards.)
 */
export async function namingTheStep<T>(what: string, state: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (error) {
    if (error instanceof CancelledError) throw error
    const lost = isConnectionLost(error) ? error : error instanceof UserError && isConnectionLost(error.cause) ? error.cause : undefined
    if (lost === undefined) throw error
    const inner = toUserError(lost)
    throw new UserError(messages.getMessage('error.StepLost', [what, inner.message.replace(/\.$/, ''), state]), {cause: error, hint: inner.hint})
  }
}
