import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {checkBeforeReading, note} from '../../../pipeline/command.js'
import {CancelledError, UserError} from '../../../errors.js'
import {readManifest} from '../../../archive/manifest.js'
import {inspect} from '../../../migrations/inspect.js'
import {verifyDatabase} from '../../../verify/verify-database.js'
import {plural} from '../../../text.js'
import {migrationsDirFlag, verboseListing} from '../../../flags.js'
import {fmtMs} from '../../../pipeline/ui.js'
import type {VerifyReport} from '../../../verify/report.js'
import {loadMessages} from '../../../messages.js'

const messages = loadMessages('verify')

export type VerifyResult = {database: string; schema: string; upTo: number} & VerifyReport & {elapsedMs: number}

export default class Verify extends BaseCommand<VerifyResult> {
  static description = messages.getMessage('description')
  static examples = messages.getMessages('examples')
  static flags = {
    manifest: Flags.string({description: messages.getMessage('flags.manifest.description')}),
    'exact-counts': Flags.boolean({default: false, description: messages.getMessage('flags.exact-counts.description')}),
    'migrations-dir': migrationsDirFlag,
    ...verboseListing(messages.getMessage('flags.verbose.lists')),
  }

  async run(): Promise<VerifyResult> {
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
      throw new UserError(messages.getMessage('error.NothingApplied', [ins.migrations.map((m) => m.name).join(', '), target.conn.database]), {
        hint: messages.getMessage('error.NothingApplied.hint'),
      })
    }
    const upTo = Math.max(...applied)
    const report = await scope.untilCancelled(
      verifyDatabase(ins.sql, {exactCounts: flags['exact-counts'], manifest, schema: ins.plan.appSchema, upTo}),
      () => new CancelledError('verify', messages.getMessage('error.Cancelled.outcome')),
    )
    const elapsedMs = Date.now() - startedAt
    if (!this.jsonMode) {
      this.printChecks(report)
      const counts = countChecks(report)
      const outcome = [target.conn.database, ins.plan.appSchema, upTo, counts, fmtMs(elapsedMs)]
      this.say(report.ok ? messages.getMessage('info.Verified', outcome) : messages.getMessage('info.VerifyFailed', outcome))
    }
    if (!report.ok) {
      // With --json the document says ok: false and what failed; the exit code says it too.
      if (this.jsonMode) process.exitCode = 1
      else {
        const first = report.failures[0].replace(/\.$/, '')
        throw new UserError(
          report.failures.length > 1
            ? messages.getMessage('error.Failed.more', [first, report.failures.length - 1])
            : messages.getMessage('error.Failed', [first]),
        )
      }
    }
    return {database: target.conn.database, schema: ins.plan.appSchema, upTo, ...report, elapsedMs}
  }

  /** What failed first, then warnings; the checks that passed only with --verbose (there are hundreds). */
  private printChecks(report: VerifyReport): void {
    const order = ['fail', 'warn', 'ok'] as const
    const label = {fail: 'FAIL', ok: 'ok  ', warn: 'WARN'}
    for (const status of order) {
      if (status === 'ok' && !this.verbose) continue
      for (const c of report.checks.filter((x) => x.status === status)) this.say(`  ${label[status]}  ${c.name}: ${c.detail}`)
    }
    if (!this.verbose && report.checks.some((c) => c.status === 'ok')) this.say(messages.getMessage('info.MoreChecks'))
    this.say('')
  }
}

/** "2 failed, 1 warning, 359 passed (of 362 checks)" */
function countChecks(report: VerifyReport): string {
  const n = (status: string) => report.checks.filter((c) => c.status === status).length
  if (n('ok') === report.checks.length) return messages.getMessage('info.Counts.passed', [plural(n('ok'), 'check')])
  const parts = [
    n('fail') ? messages.getMessage('info.Counts.failed', [n('fail')]) : '',
    n('warn') ? plural(n('warn'), 'warning') : '',
    messages.getMessage('info.Counts.passed', [n('ok')]),
  ]
  return messages.getMessage('info.Counts.of', [parts.filter(Boolean).join(', '), plural(report.checks.length, 'check')])
}
