import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../../base-command.js'
import {buildSchedule, type Schedule} from '../../../../maintain/schedule.js'

export type ScheduleResult = {ok: true} & Schedule & {database: string; projectDir: string}

export default class MaintainSchedule extends BaseCommand<ScheduleResult> {
  static description = `Print a crontab entry that runs "maintain cleanup" nightly from the project folder (so it reads the project's env files; no password on the line), with --yes, --json to a log, and flock so runs never overlap; and the same through the nself CLI's e2ee bridge. Prints only: install it yourself with crontab -e.`
  static examples = ['<%= config.bin %> db e2ee maintain schedule', '<%= config.bin %> db e2ee maintain schedule --at 04:30 --audit-days 180 --log logs/cleanup.log']
  static flags = {
    at: Flags.string({default: '03:17', description: 'Time of day (HH:MM, the cron machine\'s local time).'}),
    'audit-days': Flags.integer({description: 'Passed to cleanup (default there: 90).', min: 1}),
    log: Flags.string({default: 'logs/nself-e2ee-cleanup.log', description: 'Log file, relative to the project folder.'}),
    'prekey-days': Flags.integer({description: 'Passed to cleanup (default there: 30).', min: 1}),
  }

  async run(): Promise<ScheduleResult> {
    const flags = await this.parseBase(MaintainSchedule)
    const target = this.targetFrom(flags)
    const cleanupArgs: string[] = []
    if (flags['audit-days'] !== undefined) cleanupArgs.push('--audit-days', String(flags['audit-days']))
    if (flags['prekey-days'] !== undefined) cleanupArgs.push('--prekey-days', String(flags['prekey-days']))
    // Connection flags given here are passed on; everything else comes from the env files at run time.
    if (flags.database) cleanupArgs.push('--database', flags.database)
    if (flags.schema) cleanupArgs.push('--schema', flags.schema)
    if (flags['nself-env-file']) cleanupArgs.push('--nself-env-file', path.resolve(flags['nself-env-file']))
    const bin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', '..', 'bin', 'run.js')
    const schedule = buildSchedule({
      at: flags.at, binPath: bin, cleanupArgs, logFile: flags.log, nodePath: process.execPath,
      pathEnv: [path.dirname(process.execPath), '/usr/local/bin', '/usr/bin', '/bin'].filter((p, i, a) => a.indexOf(p) === i).join(':'),
      projectDir: target.projectDir,
    })
    const result: ScheduleResult = {ok: true, ...schedule, database: target.conn.database, projectDir: target.projectDir}
    if (this.jsonMode) return result
    for (const l of schedule.lines) this.say(l)
    this.say('')
    this.say('# Or through the nself CLI, with the nself-e2ee bridge in ~/.nself/plugins/bin (see the README):')
    this.say(schedule.nselfCron)
    this.say('')
    this.say(`# Each run appends one JSON document ({"ok": true, "deleted": N, ...}) to the log; exit 130 or 1 means look at it.`)
    this.say(`# Settings (database, user, password) come from the env files in ${target.projectDir} when the job runs.`)
    return result
  }
}
