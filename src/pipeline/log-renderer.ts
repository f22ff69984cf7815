/**
 * Step output made for logs (no terminal, or CI): one line per event, each step's progress at most once per
 * interval (plus its last state), no line repeated, and no error text: the command prints each error once.
 *
 * listr2's own verbose renderer prints every progress tick (hundreds of identical "… written" lines) and the
 * error of a failed step, which the command then prints again.
 */
import {type ListrRenderer, ListrTaskEventType, ListrTaskState} from 'listr2'

import {fmtMs} from './ui.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.pipeline.log-renderer')

type Task = ConstructorParameters<typeof ListrRenderer>[0][number]

/** Default seconds between two progress lines of one step in logs (`--progress-interval`). */
export const DEFAULT_PROGRESS_INTERVAL_S = 5

let progressIntervalMs = DEFAULT_PROGRESS_INTERVAL_S * 1000

export function setProgressInterval(seconds: number): void {
  progressIntervalMs = seconds * 1000
}

export function logLine(tag: string, text: string): void {
  process.stdout.write(`[${tag}] ${text}\n`)
}

/**
 * Passes on at most one line per `intervalMs`, counted from the step's start (a step shorter than the interval
 * shows only its last state), and never the line it passed last; a line held back is written when its interval
 * ends (or at `flush`) unless a newer one replaced it. The step's final state is never lost.
 */
export class ProgressThrottle {
  private lastAt: number
  private last: string | null = null
  private pending: string | null = null
  private timer: NodeJS.Timeout | null = null

  constructor(
    private readonly write: (line: string) => void,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.lastAt = now()
  }

  push(line: string): void {
    if (line === this.last) {
      this.pending = null
      return
    }
    const wait = this.lastAt + this.intervalMs - this.now()
    if (wait <= 0) {
      this.emit(line)
      return
    }
    this.pending = line
    this.timer ??= setTimeout(() => {
      this.timer = null
      this.flush()
    }, wait).unref()
  }

  /** Forget the line held back: a note of the step (e.g. "restored in 2 s") says more than the tick before it. */
  drop(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    this.pending = null
  }

  /** Write the line held back, if any (a step's last progress, before its result). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    if (this.pending !== null && this.pending !== this.last) this.emit(this.pending)
    this.pending = null
  }

  private emit(line: string): void {
    this.pending = null
    this.last = line
    this.lastAt = this.now()
    this.write(line)
  }
}

const throttles = new WeakMap<object, ProgressThrottle>()
/** Steps see listr2's task wrapper, the renderer the task inside it: both find the same throttle. */
const keyOf = (task: object): object => (task as {task?: object}).task ?? task

/** In logs, a step's progress goes through a throttle; on a terminal it replaces the step's output line. */
export function startStepProgress(task: object): ProgressThrottle {
  const throttle = new ProgressThrottle((line) => logLine('PROGRESS', line), progressIntervalMs)
  throttles.set(keyOf(task), throttle)
  return throttle
}

/** The progress callback for a step: throttled in logs, the live output line on a terminal. */
export function progressOf(task: {output?: string}): (line: string) => void {
  return (line) => {
    const throttle = throttles.get(keyOf(task))
    if (throttle) throttle.push(line)
    else task.output = line
  }
}

/** listr2 renderer for logs: STARTED, OUTPUT (notes, not repeated), COMPLETED/SKIPPED/FAILED with the step's time. */
export class LogRenderer {
  static nonTTY = true
  static rendererOptions: Record<PropertyKey, unknown> = {}
  static rendererTaskOptions: Record<PropertyKey, unknown> = {}

  constructor(private readonly tasks: Task[]) {}

  render(): void {
    for (const task of this.tasks) this.follow(task)
  }

  end(): void {}

  private follow(task: Task): void {
    let startedAt = Date.now()
    let lastOutput: string | null = null
    const took = () => fmtMs(Date.now() - startedAt)
    task.on(ListrTaskEventType.STATE, (state) => {
      if (!task.hasTitle()) return
      if (state === ListrTaskState.STARTED) {
        startedAt = Date.now()
        logLine('STARTED', task.title ?? '')
      } else if (state === ListrTaskState.COMPLETED) {
        logLine('COMPLETED', messages.getMessage('log.Completed', [String(task.title), took()]))
      }
    })
    task.on(ListrTaskEventType.OUTPUT, (data) => {
      for (const line of String(data)
        .split('\n')
        .filter((l) => l.trim() !== '')) {
        if (line === lastOutput) continue
        lastOutput = line
        throttles.get(task)?.drop()
        logLine('OUTPUT', line)
      }
    })
    task.on(ListrTaskEventType.MESSAGE, (message) => {
      if (message?.error) logLine('FAILED', messages.getMessage('log.Failed', [String(task.title), took()]))
      else if (message?.skip) logLine('SKIPPED', message.skip === task.title ? task.title : `${task.title}: ${message.skip}`)
    })
  }
}
