import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../../base-command.js'
import {assertTablesExist} from '../../../../maintain/cleanup.js'
import {type MaintenanceReport, maintenanceReport} from '../../../../maintain/report.js'
import {loadMigrations} from '../../../../migrations/files.js'
import {findAppSchema} from '../../../../migrations/ledger.js'
import {connectChecked} from '../../../../connection/connect.js'
import {fmtBytes} from '../../../../text.js'
import {loadMessages} from '../../../../messages.js'

const messages = loadMessages('maintain.report')

export type ReportResult = {database: string; ok: true} & MaintenanceReport

export default class MaintainReport extends BaseCommand<ReportResult> {
  static description = messages.getMessage('description')
  static examples = messages.getMessages('examples')
  static flags = {
    list: Flags.integer({default: 20, description: messages.getMessage('flags.list.description'), max: 10_000, min: 0}),
    'rotation-days': Flags.integer({default: 7, description: messages.getMessage('flags.rotation-days.description'), min: 1}),
    'stock-threshold': Flags.integer({default: 10, description: messages.getMessage('flags.stock-threshold.description'), min: 1}),
  }

  async run(): Promise<ReportResult> {
    const flags = await this.parseBase(MaintainReport)
    const target = this.targetFrom(flags)
    const sql = this.scope.own(await connectChecked(target.conn, {max: 1}))
    const schema = await findAppSchema(sql, target.schema)
    await assertTablesExist(
      sql,
      schema,
      ['nchat_identity_keys', 'nchat_signed_prekeys', 'nchat_one_time_prekeys'],
      messages.getMessage('error.MissingTable.what'),
    )
    const report = await maintenanceReport(sql, {
      listLimit: flags.list,
      migrations: loadMigrations(),
      rotationDays: flags['rotation-days'],
      schema,
      stockThreshold: flags['stock-threshold'],
    })
    if (!this.jsonMode) this.print(target.conn.database, report)
    return {database: target.conn.database, ok: true, ...report}
  }

  private print(database: string, r: MaintenanceReport): void {
    const st = r.statistics
    this.say(messages.getMessage('info.Title', [database, r.schema, r.generatedAt]))
    this.say('')
    const since = st.since ?? messages.getMessage('info.IndexUsage.neverReset')
    this.say(
      messages.getMessage('info.IndexUsage', [
        st.observedDays === null ? since : messages.getMessage('info.IndexUsage.days', [since, st.observedDays]),
        st.resetAt ?? messages.getMessage('info.never'),
        st.serverStartedAt,
      ]),
    )
    if (st.observedDays !== null && st.observedDays < 7) this.say(messages.getMessage('info.IndexUsage.young'))
    for (const i of r.indexes) {
      const flag = !i.unused ? '' : i.enforcesConstraint ? messages.getMessage('info.Index.unusedConstraint') : messages.getMessage('info.Index.unused')
      this.say(`  ${i.table.padEnd(26)} ${i.index.padEnd(40)} ${String(i.scans).padStart(10)} scans ${fmtBytes(i.bytes).padStart(10)}  ${flag}`)
    }
    this.say('')
    const sp = r.signedPrekeys
    this.say(messages.getMessage('info.SignedPrekeys', [sp.rotationDays, sp.staleDevices]))
    for (const d of sp.devices)
      this.say(messages.getMessage('info.SignedPrekeys.device', [d.deviceId, d.userId, d.rotatedAt ?? messages.getMessage('info.never')]))
    const ps = r.prekeyStock
    this.say(messages.getMessage('info.PrekeyStock', [ps.threshold, ps.lowDevices]))
    for (const d of ps.devices) this.say(messages.getMessage('info.PrekeyStock.device', [d.deviceId, d.userId, d.unconsumed]))
    this.say('')
    this.say(messages.getMessage('info.Bloat', [r.bloat.method, r.bloat.note]))
    for (const b of [...r.bloat.tables, ...r.bloat.indexes]) {
      this.say(
        `  ${(b.table ? `${b.table}.${b.name}` : b.name).padEnd(56)} ${fmtBytes(b.bytes).padStart(10)}  ${b.estimated === false ? messages.getMessage('info.Bloat.noStatistics') : messages.getMessage('info.Bloat.reclaimable', [fmtBytes(b.wastedBytes), b.percent])}`,
      )
    }
    this.say('')
    this.say(messages.getMessage('info.Vacuum'))
    for (const m of r.maintenance) {
      const vac = latest(m.lastVacuum, m.lastAutovacuum)
      const an = latest(m.lastAnalyze, m.lastAutoanalyze)
      this.say(
        messages.getMessage('info.Vacuum.table', [
          m.table.padEnd(26),
          vac ?? messages.getMessage('info.never'),
          an ?? messages.getMessage('info.never'),
          m.liveRows,
          m.deadRows,
        ]),
      )
    }
  }
}

function latest(a: string | null, b: string | null): string | null {
  if (!a) return b
  if (!b) return a
  return a > b ? a : b
}
