import type {RootScope} from './scope.js'

/**
 * The process's hooks for Ctrl+C and SIGTERM, installed once, and the one piece of process-wide state: the root
 * scope of the command that is running, to which every signal is routed (the first aborts its run, the second
 * abandons its undos; see scope.ts).
 */
let active: RootScope | undefined
let installed = false

/** The root scope signals and crashes are routed to (the running command's), if any. */
export function activeScope(): RootScope | undefined {
  return active
}

/** Route this process's signals (and crashes, src/last-resort.ts) to `scope` from now on. */
export function activate(scope: RootScope | undefined): void {
  active = scope
}

/** A signal as the process hook receives it (also Ctrl+C typed at a prompt, which readline swallows). */
export function deliverSignal(signal: NodeJS.Signals): void {
  if (active) active.deliverSignal(signal)
  else process.exit(signal === 'SIGTERM' ? 143 : 130)
}

/** Install the SIGINT/SIGTERM hooks (once per process) and route them to `scope`. */
export function installSignalHandlers(scope: RootScope): void {
  activate(scope)
  if (installed) return
  installed = true
  process.on('SIGINT', deliverSignal)
  process.on('SIGTERM', deliverSignal)
}
