import {Flags} from '@oclif/core'

import type {RunnerSettings} from './migrations/runner.js'
import {DEFAULT_PROGRESS_INTERVAL_S} from './pipeline/log-renderer.js'

/** Flags shared by the commands that run migrations (migrate, dryrun, rollback). */
export const runnerFlags = {
  'lock-timeout': Flags.integer({default: 200, description: 'lock_timeout in ms for statements that lock existing tables: the longest a writer can be held up.', min: 10}),
  'lock-wait': Flags.integer({default: 60, description: 'Seconds to wait for another nself db e2ee run on the same database.', min: 0}),
  'max-lock-wait': Flags.integer({default: 120, description: 'Seconds to keep retrying locks (and waiting for long transactions) before giving up.', min: 1}),
  'migrations-dir': Flags.string({description: 'Use migration files from this folder instead of the packaged ones.'}),
  'progress-interval': Flags.integer({
    default: DEFAULT_PROGRESS_INTERVAL_S, description: 'Without a terminal (piped, CI): seconds between two progress lines of a step (0: every change); each step also logs its last state.',
    env: 'NSELF_E2EE_PROGRESS_INTERVAL', max: 3600, min: 0,
  }),
}

/** The runner's settings from `runnerFlags` (seconds → ms), the one place they are converted. */
export function runnerSettings(flags: {'lock-timeout': number; 'lock-wait': number; 'max-lock-wait': number}): RunnerSettings {
  return {lockTimeoutMs: flags['lock-timeout'], maxLockWaitMs: flags['max-lock-wait'] * 1000, runLockWaitMs: flags['lock-wait'] * 1000}
}

export const backupFlags = {
  'backup-dir': Flags.string({description: 'Where backups go (default: the nself project\'s backups/).'}),
  jobs: Flags.integer({default: 2, description: 'Parallel jobs for pg_restore.', max: 64, min: 1}),
}

/** --verbose (a base flag: the cause of errors) also lists what a command's report leaves out by default. */
export function verboseListing(what: string) {
  return {verbose: Flags.boolean({default: false, description: `List ${what}; show the underlying cause of errors.`})}
}
