import {Flags} from '@oclif/core'

import {loadMessages} from './messages.js'
import type {RunnerSettings} from './migrations/runner.js'
import {DEFAULT_PROGRESS_INTERVAL_S} from './pipeline/log-renderer.js'

const messages = loadMessages('flags')

/** --migrations-dir, also taken by status and verify. */
export const migrationsDirFlag = Flags.string({description: messages.getMessage('flags.migrations-dir.description')})

/** Flags shared by the commands that run migrations (migrate, dryrun, rollback). */
export const runnerFlags = {
  'lock-timeout': Flags.integer({default: 200, description: messages.getMessage('flags.lock-timeout.description'), min: 10}),
  'lock-wait': Flags.integer({default: 60, description: messages.getMessage('flags.lock-wait.description'), min: 0}),
  'max-lock-wait': Flags.integer({default: 120, description: messages.getMessage('flags.max-lock-wait.description'), min: 1}),
  'migrations-dir': migrationsDirFlag,
  'progress-interval': Flags.integer({
    default: DEFAULT_PROGRESS_INTERVAL_S,
    description: messages.getMessage('flags.progress-interval.description'),
    env: 'NSELF_E2EE_PROGRESS_INTERVAL',
    max: 3600,
    min: 0,
  }),
}

/** The runner's settings from `runnerFlags` (seconds → ms), the one place they are converted. */
export function runnerSettings(flags: {'lock-timeout': number; 'lock-wait': number; 'max-lock-wait': number}): RunnerSettings {
  return {lockTimeoutMs: flags['lock-timeout'], maxLockWaitMs: flags['max-lock-wait'] * 1000, runLockWaitMs: flags['lock-wait'] * 1000}
}

export const backupFlags = {
  'backup-dir': Flags.string({description: messages.getMessage('flags.backup-dir.description')}),
  jobs: Flags.integer({default: 2, description: messages.getMessage('flags.jobs.description'), max: 64, min: 1}),
}

/** --verbose (a base flag: the cause of errors) also lists what a command's report leaves out by default. */
export function verboseListing(what: string) {
  return {verbose: Flags.boolean({default: false, description: messages.getMessage('flags.verbose.listing.description', [what])})}
}
