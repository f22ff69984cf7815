import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../../base-command.js'
import {buildSchedule, type Schedule} from '../../../../maintain/schedule.js'
import {loadMessages} from '../../../../messages.js'

const messages = loadMessages('maintain.schedule')

export type ScheduleResult = {ok: true} & Schedule & {database: string; projectDir: string}

export default class MaintainSchedule extends BaseCommand<ScheduleResult> {
  static description = messages.getMessage('description')
  static examples = messages.getMessages('examples')
  static flags = {
    at: Flags.string({default: '03:17', description: messages.getMessage('flags.at.description')}),
    'audit-days': Flags.integer({description: messages.getMessage('flags.audit-days.description'), min: 1}),
    log: Flags.string({default: 'logs/nself-e2ee-cleanup.log', description: messages.getMessage('flags.log.description')}),
    'prekey-days': Flags.integer({description: messages.getMessage('flags.prekey-days.description'), min: 1}),
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
      at: flags.at,
      binPath: bin,
      cleanupArgs,
      logFile: flags.log,
      nodePath: process.execPath,
      pathEnv: [path.dirname(process.execPath), '/usr/local/bin', '/usr/bin', '/bin'].filter((p, i, a) => a.indexOf(p) === i).join(':'),
      projectDir: target.projectDir,
    })
    const result: ScheduleResult = {ok: true, ...schedule, database: target.conn.database, projectDir: target.projectDir}
    if (this.jsonMode) return result
    for (const l of schedule.lines) this.say(l)
    this.say('')
    this.say(messages.getMessage('info.ThroughNself'))
    this.say(schedule.nselfCron)
    this.say('')
    this.say(messages.getMessage('info.Log'))
    this.say(messages.getMessage('info.Settings', [target.projectDir]))
    return result
  }
}
