import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {checkBeforeReading, note} from '../../../pipeline/command.js'
import {CancelledError, UserError} from '../../../errors.js'
import {readManifest} from '../../../archive/manifest.js'
import {inspect} from '../../../migrations/inspect.js'
import {verifyDatabase} from '../../../verify/verify-database.js'
import {plural} from '../../../text.js'
import {verboseListing} from '../../../flags.js'
import {fmtMs} from '../../../pipeline/ui.js'
import type {VerifyReport} from '../../../verify/report.js'

export default class Verify extends BaseCommand {
  static description = `Check that every object migrations 013-016 create is there and valid (tables, columns, indexes by name and validity, constraints validated with their delete rules, checks, the bundle view and claim function), that existing rows were not changed, and that the guide's queries use their indexes.

Read-only; works on any database. Exit 1 when a check fails, naming the object.`
  static examples = ['<%= config.bin %> db e2ee verify', '<%= config.bin %> db e2ee verify --json -d nchat_test --manifest backups/nchat_20260130_101500.dump.manifest.json']
  static flags = {
    manifest: Flags.string({description: 'A backup manifest whose row counts the tables must still have (exactly, with --exact-counts).'}),
    'exact-counts': Flags.boolean({default: false, description: 'Fail (instead of warn) when row counts differ from the manifest.'}),
    'migrations-dir': Flags.string({description: 'Use migration files from this folder instead of the packaged ones.'}),
    ...verboseListing('every check, also those that passed (by default: failures, then warnings, then how many passed)'),
  }

  async run(): Promise<void> {
    const startedAt = Date.now()
    const flags = await this.parseBase(Verify)
    const target = this.targetFrom(flags)
    const manifest = flags.manifest ? await readManifest(flags.manifest) : undefined
    const scope = this.runScope(target)
    const state = await checkBeforeReading(scope, 'verify')
    if (state?.repaired) note(state.repaired)
    const ins = await inspect(target, {migrationsDir: flags['migrations-dir']})
    // After Ctrl+C a check may still be running on the server: the scope ends it rather than wait for it.
    scope.ownPool(ins.sql)
    const applied = ins.plan.migrations.filter((m) => m.state !== 'pending').map((m) => m.version)
    if (applied.length === 0) {
      throw new UserError(`None of the migrations ${ins.migrations.map((m) => m.name).join(', ')} is applied to ${target.conn.database}; there is nothing to verify.`, {hint: 'Run nself db e2ee migrate first.'})
    }
    const upTo = Math.max(...applied)
    const report = await scope.untilCancelled(
      verifyDatabase(ins.sql, {exactCounts: flags['exact-counts'], manifest, schema: ins.plan.appSchema, upTo}),
      () => new CancelledError('verify', 'the database was not changed (verify only reads)'),
    )
    const elapsedMs = Date.now() - startedAt
    if (this.jsonMode) {
      this.printJson({database: target.conn.database, schema: ins.plan.appSchema, upTo, ...report, elapsedMs})
    } else {
      this.printChecks(report)
      const counts = countChecks(report)
      this.say(report.ok
        ? `Verified ${target.conn.database} (schema ${ins.plan.appSchema}) up to migration ${upTo}: ${counts}, in ${fmtMs(elapsedMs)}.`
        : `Verify of ${target.conn.database} (schema ${ins.plan.appSchema}) up to migration ${upTo}: ${counts}, in ${fmtMs(elapsedMs)}.`)
    }
    if (!report.ok) {
      if (this.jsonMode) process.exitCode = 1
      else throw new UserError(`Verification failed: ${report.failures[0].replace(/\.$/, '')}${report.failures.length > 1 ? ` (and ${report.failures.length - 1} more, listed above)` : ''}.`)
    }
  }

  /** What failed first, then warnings; the checks that passed only with --verbose (there are hundreds). */
  private printChecks(report: VerifyReport): void {
    const order = ['fail', 'warn', 'ok'] as const
    const label = {fail: 'FAIL', ok: 'ok  ', warn: 'WARN'}
    for (const status of order) {
      if (status === 'ok' && !this.verbose) continue
      for (const c of report.checks.filter((x) => x.status === status)) this.say(`  ${label[status]}  ${c.name}: ${c.detail}`)
    }
    if (!this.verbose && report.checks.some((c) => c.status === 'ok')) this.say('  (every check: --verbose or --json)')
    this.say('')
  }
}

/** "2 failed, 1 warning, 359 passed (of 362 checks)" */
function countChecks(report: VerifyReport): string {
  const n = (status: string) => report.checks.filter((c) => c.status === status).length
  if (n('ok') === report.checks.length) return `${plural(n('ok'), 'check')} passed`
  const parts = [n('fail') ? `${n('fail')} failed` : '', n('warn') ? plural(n('warn'), 'warning') : '', `${n('ok')} passed`]
  return `${parts.filter(Boolean).join(', ')} (of ${plural(report.checks.length, 'check')})`
}
