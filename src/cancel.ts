import {CancelledError} from './errors.js'

/**
 * Ctrl+C handling. listr2 exits on SIGINT without running rollbacks, and `docker exec` does not forward
 * signals, so the process keeps its own list of things to stop: running queries, child processes, server
 * sessions tagged with our application name, the dry-run clone. The first Ctrl+C runs them all; the
 * step that was interrupted then throws CancelledError and the command exits 130.
 */
type Handler = () => Promise<void> | void

const handlers = new Set<Handler>()
let cancelled = false
let installed = false
let cancelling: Promise<void> | undefined

export function isCancelled(): boolean {
  return cancelled
}

export function throwIfCancelled(what?: string): void {
  if (cancelled) throw new CancelledError(what)
}

/** Register something to stop on Ctrl+C; returns the function that unregisters it. */
export function onCancel(handler: Handler): () => void {
  handlers.add(handler)
  return () => handlers.delete(handler)
}

export function cancel(): Promise<void> {
  if (cancelling) return cancelling
  cancelled = true
  cancelling = (async () => {
    for (const h of [...handlers].reverse()) {
      try {
        await h()
      } catch {
        // Best effort: every handler gets its turn.
      }
    }
  })()
  return cancelling
}

export function installSigintHandler(): void {
  if (installed) return
  installed = true
  const onSignal = () => {
    if (cancelled) return
    process.stderr.write('\nStopping: cancelling the running step and undoing what it started…\n')
    void cancel()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
}

/** For tests that run several commands in one process. */
export function resetCancellation(): void {
  cancelled = false
  cancelling = undefined
  handlers.clear()
}
