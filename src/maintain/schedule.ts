import path from 'node:path'

import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.maintain.schedule')

/**
 * Nightly cleanup as a crontab entry, printed for the operator to install (never installed by us). Cron runs
 * with an almost empty environment and in $HOME: the entry changes to the project folder, so the command reads
 * the project's env files itself (the password never appears on the line), runs without a terminal (--yes),
 * writes one JSON document per run to a log, and `flock -n` skips a night when the last run still holds the lock.
 */

export interface ScheduleOptions {
  projectDir: string
  /** HH:MM, local time of the machine running cron. */
  at: string
  logFile: string
  nodePath: string
  binPath: string
  /** Extra cleanup flags, already validated (e.g. --audit-days 90). */
  cleanupArgs: string[]
  pathEnv: string
}

export interface Schedule {
  cron: string
  nselfCron: string
  lines: string[]
}

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`
}

export function parseTime(at: string): {hour: number; minute: number} {
  const m = /^(\d{1,2}):(\d{2})$/.exec(at)
  const hour = m ? Number(m[1]) : Number.NaN
  const minute = m ? Number(m[2]) : Number.NaN
  if (!m || hour > 23 || minute > 59)
    throw new UserError(messages.getMessage('error.bad-time', [at]), {exitCode: 2, hint: messages.getMessage('hint.bad-time')})
  return {hour, minute}
}

export function buildSchedule(o: ScheduleOptions): Schedule {
  const {hour, minute} = parseTime(o.at)
  const project = path.resolve(o.projectDir)
  const log = path.resolve(project, o.logFile)
  const lock = path.join(path.dirname(log), '.nself-e2ee-cleanup.lock')
  const args = ['db', 'e2ee', 'maintain', 'cleanup', '--yes', '--json', ...o.cleanupArgs].map(shellQuote).join(' ')
  const when = `${minute} ${hour} * * *`
  const tail = `>> ${shellQuote(log)} 2>&1`
  const cron = `${when} cd ${shellQuote(project)} && mkdir -p ${shellQuote(path.dirname(log))} && flock -n ${shellQuote(lock)} ${shellQuote(o.nodePath)} ${shellQuote(o.binPath)} ${args} ${tail}`
  const nselfArgs = ['e2ee', 'maintain', 'cleanup', '--yes', '--json', ...o.cleanupArgs].map(shellQuote).join(' ')
  const nselfCron = `${when} cd ${shellQuote(project)} && mkdir -p ${shellQuote(path.dirname(log))} && flock -n ${shellQuote(lock)} nself ${nselfArgs} ${tail}`
  return {
    cron,
    lines: [messages.getMessage('crontab.comment'), `PATH=${o.pathEnv}`, cron],
    nselfCron,
  }
}
