import {type Sql, stopPool} from '../connection/connect.js'
import type {Target} from '../connection/target.js'
import {CancelledError, toUserError} from '../errors.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.run.scope')

/**
 * The run scope: what a command's run holds and must give back. Every pipeline and step receives one; it carries
 * the target, one logger and an AbortSignal, owns the pools and connections opened for the run (closed when the
 * scope closes, newest first), and the handlers that stop running work when the run is cancelled (kill a child,
 * end tagged sessions, drop the dry run's clone).
 *
 * Ctrl+C and SIGTERM reach the command's root scope (src/run/signals.ts). listr2 exits on SIGINT without running
 * rollbacks, and `docker exec` does not forward signals, so the scope keeps its own list of things to stop.
 * - the run: the first signal aborts the root scope and runs its handlers, newest first; the interrupted step
 *   throws CancelledError;
 * - an undo scope (`underUndo`): undoing what a run committed must finish, so the first signal does not reach
 *   it; a second signal aborts it (the operator insists), and the undo then says what state it left.
 * Code inside an undo is handed the undo scope, so `cancelled` there means "abandoned".
 */
export interface Logger {
  /** A line of the running step (the log renderer prints each; the terminal shows the last). */
  info(line: string): void
  /** A progress line (bytes written, entries restored): throttled in logs, the last one shown on a terminal. */
  progress(line: string): void
}

export const silentLogger: Logger = {info() {}, progress() {}}

/** A logger that sends both kinds of line to one function. */
export function loggerOf(write: (line: string) => void): Logger {
  return {info: write, progress: write}
}

type Handler = () => Promise<void> | void

/** Closes something the scope owns; `interrupted` when the run was cancelled (queries may still wait on the server). */
type Closer = (interrupted: boolean) => Promise<void>

/** A pool or connection the scope can end (postgres.js `Sql`, a one-connection session). */
export interface Endable {
  end(options?: {timeout?: number}): Promise<void>
}

/** What the root scope knows for the whole run: the signals received, the undos running, the crash undos. */
interface Root {
  signals: number
  by: NodeJS.Signals | undefined
  undos: Set<State>
  crashUndos: Set<() => Promise<string>>
  crashing: boolean
  /** The pipeline step running now (Steps.run), so that a crash can say where the run stopped. */
  step?: string
}

interface State {
  controller: AbortController
  handlers: Set<Handler>
  closers: Closer[]
  running?: Promise<void>
  /** Set once the scope closed: what is handed to it afterwards (work that went on after a cancel) is closed at once. */
  closed: boolean
  root: Root
}

function newState(root: Root): State {
  return {closed: false, closers: [], controller: new AbortController(), handlers: new Set(), root}
}

function runHandlers(s: State): Promise<void> {
  if (s.running) return s.running
  s.controller.abort()
  s.running = (async () => {
    for (const h of [...s.handlers].reverse()) {
      try {
        await h()
      } catch {
        // Best effort: every handler gets its turn.
      }
    }
  })()
  return s.running
}

export class RunScope {
  readonly #s: State
  /** The one logger of this scope (a step's view of the scope logs into its own task). */
  readonly log: Logger
  readonly #target: Target | undefined

  /** @internal use createRunScope (a root), `child`, `withLog`, `withTarget` or `underUndo`. */
  protected constructor(state: State, log: Logger, target: Target | undefined) {
    this.#s = state
    this.log = log
    this.#target = target
  }

  /** Aborted by the first Ctrl+C/SIGTERM for the run (and its children); for an undo scope, by the second. */
  get signal(): AbortSignal {
    return this.#s.controller.signal
  }

  get cancelled(): boolean {
    return this.#s.controller.signal.aborted
  }

  /** The database this run works on (a scope made without one has none to give). */
  get target(): Target {
    if (!this.#target) throw new Error('This run scope was created without a target.')
    return this.#target
  }

  throwIfCancelled(what?: string): void {
    if (this.cancelled) throw new CancelledError(what)
  }

  /** Register something to stop when this scope is cancelled (run newest first); returns what unregisters it. */
  onCancel(handler: Handler): () => void {
    const handlers = this.#s.handlers
    handlers.add(handler)
    return () => handlers.delete(handler)
  }

  /**
   * `work`, or a CancelledError from `error()` as soon as this scope is cancelled (for read-only work that need
   * not be waited for: the pool's end stops it on the server).
   */
  async untilCancelled<T>(work: Promise<T>, error: () => Error): Promise<T> {
    let dispose = () => {}
    const stopped = new Promise<never>((_, reject) => {
      if (this.cancelled) reject(error())
      else dispose = this.onCancel(() => reject(error()))
    })
    try {
      return await Promise.race([work, stopped])
    } finally {
      dispose()
      work.catch(() => {})
    }
  }

  /** The same scope, logging to `log` (what a step hands the work it runs). */
  withLog(log: Logger): RunScope {
    return new RunScope(this.#s, log, this.#target)
  }

  /** The same scope, working on `target` (a command's root scope exists before its flags are parsed). */
  withTarget(target: Target): RunScope {
    return new RunScope(this.#s, this.log, target)
  }

  /** Mark `title` as the step running now (until the returned function is called): a crash names it. */
  enterStep(title: string): () => void {
    const root = this.#s.root
    const before = root.step
    root.step = title
    return () => {
      root.step = before
    }
  }

  /** Close `close` with this scope (newest first); returns the function that closes it now instead. */
  defer(close: Closer): () => Promise<void> {
    let done = false
    const once: Closer = async (interrupted) => {
      if (done) return
      done = true
      await close(interrupted)
    }
    if (this.#s.closed) void once(this.cancelled).catch(() => {})
    else this.#s.closers.push(once)
    return async () => {
      const i = this.#s.closers.indexOf(once)
      if (i >= 0) this.#s.closers.splice(i, 1)
      await once(this.cancelled)
    }
  }

  /**
   * A pool or connection this scope owns: ended when the scope closes (`stop` instead when the run was cancelled,
   * e.g. connection/connect.ts's `stopPool`, which first cancels its queries waiting on the server).
   */
  own<T extends Endable>(pool: T, stop?: (pool: T) => Promise<void>): T {
    this.defer(async (interrupted) => {
      await (interrupted && stop ? stop(pool) : pool.end({timeout: 2})).catch(() => {})
    })
    return pool
  }

  /** A postgres.js pool this scope owns: ended when the scope closes; after Ctrl+C, `stopPool` (its queries are cancelled first). */
  ownPool(sql: Sql): Sql {
    return this.own(sql, stopPool)
  }

  /**
   * `fn` in a child scope: cancelled with this one (its handlers run when this scope is aborted), and whatever it
   * owns is closed when `fn` ends, not when this scope does.
   */
  async child<T>(fn: (scope: RunScope) => Promise<T>): Promise<T> {
    const state = newState(this.#s.root)
    const link = this.onCancel(() => runHandlers(state))
    if (this.cancelled) state.controller.abort()
    const scope = new RunScope(state, this.log, this.#target)
    try {
      return await fn(scope)
    } finally {
      link()
      await scope.close()
    }
  }

  /**
   * `fn` (an undo) in a scope of its own, which the first signal does not cancel; a second one does (and one that
   * starts after a second signal is abandoned from the start). What it owns is closed when `fn` ends.
   */
  async underUndo<T>(fn: (undo: RunScope) => Promise<T>): Promise<T> {
    const root = this.#s.root
    const state = newState(root)
    if (root.signals >= 2) state.controller.abort()
    root.undos.add(state)
    const scope = new RunScope(state, this.log, this.#target)
    try {
      return await fn(scope)
    } finally {
      root.undos.delete(state)
      await scope.close()
    }
  }

  /** True while some undo of this run is running (the run may be cancelled while an undo still has to finish). */
  get undoInProgress(): boolean {
    return this.#s.root.undos.size > 0
  }

  /**
   * While the returned function is not called, a crash of the process (src/last-resort.ts) runs `undo` after the
   * cancel handlers; it returns the clause saying what it did.
   */
  registerCrashUndo(undo: () => Promise<string>): () => void {
    const undos = this.#s.root.crashUndos
    undos.add(undo)
    return () => undos.delete(undo)
  }

  /** Close what this scope owns, newest first (stopped, not waited for, when the run was cancelled). */
  async close(): Promise<void> {
    const s = this.#s
    s.closed = true
    const interrupted = this.cancelled
    while (s.closers.length > 0) {
      const close = s.closers.pop()
      try {
        await close?.(interrupted)
      } catch {
        // Best effort: everything else still gets closed.
      }
    }
  }

  /** @internal for RootScope */
  protected get state(): State {
    return this.#s
  }
}

/** The scope a command (or a library caller) starts with: the run's signals, interruption and crash arrive here. */
export class RootScope extends RunScope {
  /** @internal use createRunScope */
  constructor(target: Target | undefined, log: Logger) {
    super(newState({by: undefined, crashing: false, crashUndos: new Set(), signals: 0, undos: new Set()}), log, target)
  }

  /** Cancel the run (the first Ctrl+C): its handlers run, newest first. Undo scopes are not touched. */
  abort(): Promise<void> {
    return runHandlers(this.state)
  }

  /** Abandon every running undo (the second Ctrl+C), and any undo that starts later. */
  abandonUndo(): Promise<void> {
    this.state.root.signals = Math.max(this.state.root.signals, 2)
    return Promise.all([...this.state.root.undos].map((s) => runHandlers(s))).then(() => {})
  }

  /** Which signal interrupted the run, if one did. */
  get interruptedBy(): NodeJS.Signals | undefined {
    return this.state.root.by
  }

  /** A signal as the process hook receives it (also Ctrl+C typed at a prompt, which readline swallows). */
  deliverSignal(signal: NodeJS.Signals): void {
    const root = this.state.root
    root.signals++
    if (root.signals === 1) root.by = signal
    const by = signal === 'SIGINT' ? 'Ctrl+C' : signal
    if (root.signals === 1) {
      process.stderr.write(
        root.undos.size > 0 ? `\n${messages.getMessage('info.SignalDuringUndo', [by])}\n` : `\n${messages.getMessage('info.Stopping', [by])}\n`,
      )
      void this.abort()
      return
    }
    if (root.signals === 2) {
      process.stderr.write(`\n${messages.getMessage('info.SignalAgain', [by])}\n`)
      void this.abandonUndo()
    }
  }

  /** The pipeline step that was running, if any (for the crash's sentence). */
  get runningStep(): string | undefined {
    return this.state.root.step
  }

  /** True once a crash is being handled: the normal error path then leaves the report to it. */
  get crashing(): boolean {
    return this.state.root.crashing
  }

  /**
   * For the last-resort handler: mark the crash, run the cancel handlers (bounded), then every registered crash
   * undo, newest first; returns the clauses they said. Only the first call does anything.
   */
  async crash(boundMs = 15_000): Promise<string[] | undefined> {
    const root = this.state.root
    if (root.crashing) return undefined
    root.crashing = true
    await Promise.race([this.abort(), new Promise((resolve) => setTimeout(resolve, boundMs).unref())])
    const told: string[] = []
    for (const undo of [...root.crashUndos].reverse()) {
      try {
        told.push(await undo())
      } catch (undoError) {
        told.push(messages.getMessage('error.CrashUndoFailed', [toUserError(undoError).message.replace(/\.$/, '')]))
      }
    }
    return told
  }
}

/** A root scope for a run: a command makes one per invocation; a library caller may make its own and abort it. */
export function createRunScope(o: {target?: Target; log?: Logger} = {}): RootScope {
  return new RootScope(o.target, o.log ?? silentLogger)
}

/** The caller's scope, or a fresh one nothing cancels (library functions called without a scope). */
export function scopeOr(scope: RunScope | undefined): RunScope {
  return scope ?? createRunScope()
}
