import {Listr, type ListrTask} from 'listr2'

import {CancelledError, interrupted, interruption, isConnectionLost, toUserError, UserError} from '../errors.js'
import {isCancelled} from '../cancel.js'
import type {Target} from '../connection/target.js'
import type {PgTools} from '../connection/tools.js'
import {type BackupInfo, type BackupPurpose} from '../archive/manifest.js'
import {takeBackup} from '../steps/backup.js'
import type {Inspection} from '../migrations/inspect.js'
import {TOUCHED_TABLES} from '../nchat/tables.js'
import {fmtBytes} from '../text.js'
import {LogRenderer, startStepProgress} from './log-renderer.js'
import {outputMode} from './ui.js'

// biome-ignore lint/suspicious/noExplicitAny: listr2's generics name the renderers; the pipelines pick one at run time, so they are left open here.
export type Step<C> = ListrTask<C, any, any>

/** Run steps in order, stopping at the first failure; Ctrl+C is ours (src/cancel.ts), not listr2's. */
export async function runSteps<C extends object>(steps: Step<C>[], ctx: C, json: boolean): Promise<void> {
  const mode = outputMode(json)
  const renderer = mode === 'log' ? LogRenderer : mode === 'silent' ? 'silent' : 'default'
  const options = {concurrent: false, exitOnError: true, registerSignalListeners: false, renderer}
  // A step that finished while Ctrl+C arrived may not have looked: the next one must not start.
  const guarded = steps.map((step) => ({
    ...step,
    task: async (c: C, task: Parameters<Step<C>['task']>[1]) => {
      if (isCancelled()) throw notStarted(String(step.title))
      const progress = mode === 'log' ? startStepProgress(task) : null
      try {
        return await step.task(c, task)
      } finally {
        progress?.flush()
      }
    },
  }))
  // biome-ignore lint/suspicious/noExplicitAny: the renderer is chosen at run time (see Step)
  await new Listr<C, any, any>(guarded, options as any).run(ctx)
}

function notStarted(title: string): CancelledError {
  return interrupted(`Interrupted by ${interruption().by}: the run was stopped before "${title}" started; the steps before it had finished.`)
}

/** Run a step and record how long it took under `name`, also when it fails. */
export async function timed<T>(ctx: {timings: Record<string, number>}, name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now()
  try {
    return await fn()
  } finally {
    ctx.timings[name] = Date.now() - t0
  }
}

/** A backup of production as every pipeline takes it: the tables the migrations touch counted, bytes shown. */
export function backupProduction(o: {ins: Inspection; target: Target; tools: PgTools; purpose: BackupPurpose; output: (line: string) => void; progress?: (line: string) => void}): Promise<BackupInfo> {
  const progress = o.progress ?? o.output
  return takeBackup({
    dir: o.target.backupDir, ledgerVersion: o.ins.plan.current, log: o.output,
    onProgress: (bytes) => progress(`${fmtBytes(bytes)} written`), purpose: o.purpose, schema: o.ins.plan.appSchema,
    sql: o.ins.sql, tables: TOUCHED_TABLES, target: o.target, tools: o.tools,
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
    throw new UserError(`${what} could not finish: ${inner.message.replace(/\.$/, '')}; ${state}.`, {cause: error, hint: inner.hint})
  }
}
