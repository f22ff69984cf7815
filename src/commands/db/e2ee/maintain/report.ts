import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../../base-command.js'
import {assertTablesExist} from '../../../../maintain/cleanup.js'
import {type MaintenanceReport, maintenanceReport} from '../../../../maintain/report.js'
import {loadMigrations} from '../../../../migrations/files.js'
import {findAppSchema} from '../../../../migrations/ledger.js'
import {connectChecked} from '../../../../connection/connect.js'
import {fmtBytes} from '../../../../text.js'

export default class MaintainReport extends BaseCommand {
  static description = `What the guide asks operators to watch after the upgrade, read-only: index usage of the tables 013-016 create and of the columns they add (scans, size, unused since the statistics were reset, and when that was), devices whose active signed prekey is older than the rotation period, devices low on unconsumed one-time prekeys, table and index bloat (pgstattuple when installed, otherwise an estimate from the statistics), and the last vacuum and analyze of each table.

The guide's index-usage query mixes AND/OR without parentheses and misses most of the new tables (defect D8); this one does not.`
  static examples = ['<%= config.bin %> db e2ee maintain report', '<%= config.bin %> db e2ee maintain report --json --rotation-days 7 --stock-threshold 10']
  static flags = {
    list: Flags.integer({default: 20, description: 'Devices listed per finding (all are counted).', max: 10_000, min: 0}),
    'rotation-days': Flags.integer({default: 7, description: 'Signed prekeys are rotated weekly: a device whose newest active one is older than this many days is listed.', min: 1}),
    'stock-threshold': Flags.integer({default: 10, description: 'A device with fewer unconsumed one-time prekeys than this is listed.', min: 1}),
  }

  async run(): Promise<void> {
    const flags = await this.parseBase(MaintainReport)
    const target = this.targetFrom(flags)
    const sql = this.scope.own(await connectChecked(target.conn, {max: 1}))
    const schema = await findAppSchema(sql, target.schema)
    await assertTablesExist(sql, schema, ['nchat_identity_keys', 'nchat_signed_prekeys', 'nchat_one_time_prekeys'], 'report on')
    const report = await maintenanceReport(sql, {
      listLimit: flags.list, migrations: loadMigrations(), rotationDays: flags['rotation-days'], schema, stockThreshold: flags['stock-threshold'],
    })
    if (this.jsonMode) return this.printJson({database: target.conn.database, ok: true, ...report})
    this.print(target.conn.database, report)
  }

  private print(database: string, r: MaintenanceReport): void {
    const st = r.statistics
    this.say(`Maintenance report for ${database} (schema ${r.schema}), ${r.generatedAt}`)
    this.say('')
    this.say(`Index usage (counters since ${st.since ?? 'the cluster was created (never reset)'}${st.observedDays === null ? '' : `, ${st.observedDays} days`}; reset ${st.resetAt ?? 'never'}, server up since ${st.serverStartedAt})`)
    if (st.observedDays !== null && st.observedDays < 7) this.say('  Fewer than 7 days of traffic counted: the guide reads these after a week.')
    for (const i of r.indexes) {
      const flag = i.unused ? (i.enforcesConstraint ? 'unused (enforces a constraint: keep)' : 'UNUSED') : ''
      this.say(`  ${i.table.padEnd(26)} ${i.index.padEnd(40)} ${String(i.scans).padStart(10)} scans ${fmtBytes(i.bytes).padStart(10)}  ${flag}`)
    }
    this.say('')
    const sp = r.signedPrekeys
    this.say(`Signed prekeys older than ${sp.rotationDays} days (or none active): ${sp.staleDevices} device(s)`)
    for (const d of sp.devices) this.say(`  ${d.deviceId}  user ${d.userId}  rotated ${d.rotatedAt ?? 'never'}`)
    const ps = r.prekeyStock
    this.say(`Fewer than ${ps.threshold} unconsumed one-time prekeys: ${ps.lowDevices} device(s)`)
    for (const d of ps.devices) this.say(`  ${d.deviceId}  user ${d.userId}  ${d.unconsumed} left`)
    this.say('')
    this.say(`Bloat (${r.bloat.method}): ${r.bloat.note}`)
    for (const b of [...r.bloat.tables, ...r.bloat.indexes]) {
      this.say(`  ${(b.table ? `${b.table}.${b.name}` : b.name).padEnd(56)} ${fmtBytes(b.bytes).padStart(10)}  ${b.estimated === false ? 'no statistics (run ANALYZE)' : `${fmtBytes(b.wastedBytes)} (${b.percent} %) reclaimable`}`)
    }
    this.say('')
    this.say('Vacuum and analyze')
    for (const m of r.maintenance) {
      const vac = latest(m.lastVacuum, m.lastAutovacuum)
      const an = latest(m.lastAnalyze, m.lastAutoanalyze)
      this.say(`  ${m.table.padEnd(26)} vacuum ${vac ?? 'never'}  analyze ${an ?? 'never'}  live ${m.liveRows} dead ${m.deadRows}`)
    }
  }
}

function latest(a: string | null, b: string | null): string | null {
  if (!a) return b
  if (!b) return a
  return a > b ? a : b
}
