import {AsyncLocalStorage} from 'node:async_hooks'

import {CancelledError, noteInterruption} from './errors.js'

/**
 * Ctrl+C and SIGTERM. listr2 exits on SIGINT without running rollbacks, and `docker exec` does not forward
 * signals, so the process keeps its own list of things to stop: running queries, child processes, server
 * sessions tagged with our application name, the dry-run clone.
 *
 * Two scopes, each an AbortController with its own handlers:
 * - the run scope: the first signal aborts it and runs its handlers; the interrupted step throws CancelledError;
 * - an undo scope (`underUndoScope`): undoing what a run committed must finish, so the first signal does not
 *   reach it; a second signal aborts it (the operator insists), and the undo then says what state it left.
 * Code asks the scope it runs in (AsyncLocalStorage), so `isCancelled()` inside an undo means "abandoned".
 */
type Handler = () => Promise<void> | void

interface Scope {
  controller: AbortController
  handlers: Set<Handler>
  running?: Promise<void>
}

const store = new AsyncLocalStorage<Scope>()
let runScope = newScope()
const undoScopes = new Set<Scope>()
let signals = 0
let installed = false

function newScope(): Scope {
  return {controller: new AbortController(), handlers: new Set()}
}

function current(): Scope {
  return store.getStore() ?? runScope
}

function abort(scope: Scope): Promise<void> {
  if (scope.running) return scope.running
  scope.controller.abort()
  scope.running = (async () => {
    for (const h of [...scope.handlers].reverse()) {
      try {
        await h()
      } catch {
        // Best effort: every handler gets its turn.
      }
    }
  })()
  return scope.running
}

/** The AbortSignal of the scope the caller runs in (the run, or an undo). */
export function cancelSignal(): AbortSignal {
  return current().controller.signal
}

export function isCancelled(): boolean {
  return current().controller.signal.aborted
}

/** True while some undo runs (the run scope may be cancelled while an undo still has to finish). */
export function undoInProgress(): boolean {
  return undoScopes.size > 0
}

export function throwIfCancelled(what?: string): void {
  if (isCancelled()) throw new CancelledError(what)
}

/** Register something to stop when the caller's scope is cancelled; returns the function that unregisters it. */
export function onCancel(handler: Handler): () => void {
  const scope = current()
  scope.handlers.add(handler)
  return () => scope.handlers.delete(handler)
}

/** Cancel the run (the first Ctrl+C). Undo scopes are not touched. */
export function cancel(): Promise<void> {
  return abort(runScope)
}

/** Abandon every running undo (the second Ctrl+C), and any undo that starts later. */
export function abandonUndo(): Promise<void> {
  return Promise.all([...undoScopes].map((s) => abort(s))).then(() => {})
}

/**
 * Run `fn` (an undo) in its own scope, which the first signal does not cancel; a second one does. Code inside
 * sees `isCancelled()` false until then, so the undo's statements run to the end.
 */
export async function underUndoScope<T>(fn: () => Promise<T>): Promise<T> {
  const scope = newScope()
  if (signals >= 2) scope.controller.abort()
  undoScopes.add(scope)
  try {
    return await store.run(scope, fn)
  } finally {
    undoScopes.delete(scope)
  }
}

/**
 * `work`, or a CancelledError from `error()` as soon as the caller's scope is cancelled (for read-only work
 * that need not be waited for: the pool's end stops it on the server).
 */
export async function untilCancelled<T>(work: Promise<T>, error: () => Error): Promise<T> {
  let dispose = () => {}
  const stopped = new Promise<never>((_, reject) => {
    if (isCancelled()) reject(error())
    else dispose = onCancel(() => reject(error()))
  })
  try {
    return await Promise.race([work, stopped])
  } finally {
    dispose()
    work.catch(() => {})
  }
}

/** A signal as the process handler receives it (also Ctrl+C typed at a prompt, which readline swallows). */
export function deliverSignal(signal: NodeJS.Signals): void {
  signals++
  if (signals === 1) noteInterruption(signal)
  const by = signal === 'SIGINT' ? 'Ctrl+C' : signal
  if (signals === 1) {
    process.stderr.write(undoScopes.size > 0
      ? `\n${by}: the undo that is running will finish first (a second Ctrl+C abandons it).\n`
      : `\nStopping (${by}): cancelling the running step; the last message says what is left (a second Ctrl+C abandons an undo).\n`)
    void cancel()
    return
  }
  if (signals === 2) {
    process.stderr.write(`\n${by} again: abandoning the undo; the final message says what is left.\n`)
    void abandonUndo()
  }
}

export function installSigintHandler(): void {
  if (installed) return
  installed = true
  process.on('SIGINT', deliverSignal)
  process.on('SIGTERM', deliverSignal)
}

/** For tests that run several commands in one process. */
export function resetCancellation(): void {
  runScope = newScope()
  undoScopes.clear()
  signals = 0
  noteInterruption(undefined)
}
