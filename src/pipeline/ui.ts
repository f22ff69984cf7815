import {createInterface} from 'node:readline/promises'

import type {RunScope} from '../run/scope.js'
import {deliverSignal} from '../run/signals.js'
import {CancelledError, UserError} from '../errors.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.pipeline.ui')

/** listr2's default renderer on a terminal; lines made for logs in CI or when piped; nothing with --json. */
export function outputMode(json: boolean): 'terminal' | 'log' | 'silent' {
  if (json) return 'silent'
  if (process.env.CI || !process.stdout.isTTY) return 'log'
  return 'terminal'
}

/** Destructive steps need a yes: --yes, or an answer on a terminal. Checked before any work starts. */
export function assertCanConfirm(yes: boolean, what: string): void {
  if (yes) return
  if (!process.stdin.isTTY || !process.stdout.isTTY) {
    throw new UserError(messages.getMessage('error.NeedsConfirmation', [what]), {hint: messages.getMessage('error.NeedsConfirmation.hint'), exitCode: 2})
  }
}

/** Ask on the terminal. Ctrl+C (typed, which readline swallows, or a signal) is an interruption: exit 130. */
export async function confirm(scope: RunScope, question: string, yes: boolean, outcome = messages.getMessage('info.NothingChanged')): Promise<boolean> {
  if (yes) return true
  const rl = createInterface({input: process.stdin, output: process.stderr})
  rl.on('SIGINT', () => deliverSignal('SIGINT'))
  try {
    const answer = await scope.untilCancelled(
      rl.question(`${messages.getMessage('info.Question', [question])} `),
      () => new CancelledError(messages.getMessage('info.TheConfirmation'), outcome),
    )
    return /^y(es)?$/i.test(answer.trim())
  } finally {
    rl.close()
  }
}

export function fmtMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`
}

/** Each step's time and the whole run's, as every summary shows them: "preflight 0.1 s, backup 2.0 s (total 2.3 s)". */
export function fmtTimings(timings: Record<string, number>, elapsedMs: number): string {
  const steps = Object.entries(timings)
    .map(([k, v]) => `${k} ${fmtMs(v)}`)
    .join(', ')
  return steps ? `${steps} (total ${fmtMs(elapsedMs)})` : `total ${fmtMs(elapsedMs)}`
}
