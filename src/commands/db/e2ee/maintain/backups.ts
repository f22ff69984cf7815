import path from 'node:path'

import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../../base-command.js'
import {UserError} from '../../../../errors.js'
import {type BackupEntry, listAllBackups, markProtected, removeBackup, selectPrune} from '../../../../maintain/backups.js'
import {dropKeptDatabase, type KeptDatabase, keptDatabases} from '../../../../maintain/kept.js'
import {connectAdmin, databaseStates} from '../../../../maintain/server.js'
import {acquireCommandLock, type CommandLock} from '../../../../migrations/command-lock.js'
import {assertCanConfirm, confirm} from '../../../../pipeline/ui.js'
import type {Sql} from '../../../../connection/connect.js'
import {fmtBytes} from '../../../../text.js'
import {loadMessages} from '../../../../messages.js'

const messages = loadMessages('maintain.backups')

export interface BackupsResult {
  backups: BackupEntry[]
  database: string
  dir: string
  dropped: string[]
  dryRun: boolean
  kept: KeptDatabase[] | null
  ok: true
  pruned: string[]
  serverProblem: string | null
  wouldDrop: string[]
  wouldPrune: string[]
}

export default class MaintainBackups extends BaseCommand<BackupsResult> {
  static description = messages.getMessage('description')
  static examples = messages.getMessages('examples')
  static flags = {
    'backup-dir': Flags.string({description: messages.getMessage('flags.backup-dir.description')}),
    'drop-kept': Flags.boolean({default: false, description: messages.getMessage('flags.drop-kept.description')}),
    'dry-run': Flags.boolean({default: false, description: messages.getMessage('flags.dry-run.description')}),
    'lock-wait': Flags.integer({default: 60, description: messages.getMessage('flags.lock-wait.description'), min: 0}),
    keep: Flags.integer({description: messages.getMessage('flags.keep.description'), min: 0}),
    'older-than': Flags.integer({description: messages.getMessage('flags.older-than.description'), min: 0}),
    verify: Flags.boolean({default: false, description: messages.getMessage('flags.verify.description')}),
  }

  async run(): Promise<BackupsResult> {
    const flags = await this.parseBase(MaintainBackups)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    const dir = path.resolve(target.backupDir)
    const pruning = flags.keep !== undefined || flags['older-than'] !== undefined
    if ((pruning || flags['drop-kept']) && !flags['dry-run'])
      assertCanConfirm(flags.yes, pruning ? messages.getMessage('confirm.What.prune') : messages.getMessage('confirm.What.drop'))

    let admin: Sql | null = null
    let serverProblem: string | null = null
    try {
      admin = this.scope.own(await connectAdmin(target))
    } catch (error) {
      if (flags['drop-kept']) throw error
      serverProblem = (error as Error).message
    }
    const backups = await listAllBackups(dir, {deep: flags.verify})
    const dbs = backups.map((b) => b.database).filter((d): d is string => d !== null)
    markProtected(backups, await databaseStates(target, admin, dbs))
    const kept = admin ? await keptDatabases(admin, target.conn.database) : null
    const prune = selectPrune(backups, {keep: flags.keep, olderThanDays: flags['older-than']})
    const drop = flags['drop-kept'] ? (kept ?? []) : []

    this.printList(dir, backups, kept, serverProblem)
    const pruned: BackupEntry[] = []
    const dropped: KeptDatabase[] = []
    if ((prune.length > 0 || drop.length > 0) && !flags['dry-run']) {
      const parts = [
        prune.length ? messages.getMessage('confirm.Delete', [prune.length, fmtBytes(prune.reduce((s, b) => s + b.bytes, 0))]) : '',
        drop.length ? messages.getMessage('confirm.Drop', [drop.length, drop.map((d) => d.name).join(', ')]) : '',
      ].filter(Boolean)
      const what = parts.length > 1 ? messages.getMessage('confirm.Both', parts) : parts[0]
      for (const b of prune) this.note(messages.getMessage('info.WillDelete', [b.file]))
      if (!(await confirm(this.scope, `${what[0].toUpperCase()}${what.slice(1)}?`, flags.yes))) throw new UserError(messages.getMessage('error.NotConfirmed'))
      // Not while a migrate or rollback of this database runs: it may be about to restore one of these.
      const lock: CommandLock = await acquireCommandLock(target, {
        command: 'maintain',
        log: (l) => this.note(l),
        signal: this.scope.signal,
        waitMs: flags['lock-wait'] * 1000,
      })
      try {
        for (const b of prune) {
          lock.assertHeld()
          await removeBackup(b)
          pruned.push(b)
        }
        for (const d of drop) {
          lock.assertHeld()
          // drop is empty unless the kept databases were listed over admin (kept is null without it).
          if (!admin) throw new Error('Kept databases to drop without a connection to the server that listed them.')
          await dropKeptDatabase(admin, d, target.conn.database)
          dropped.push(d)
        }
      } finally {
        await lock.release()
      }
    }
    const wouldPrune = flags['dry-run'] ? prune : []
    const wouldDrop = flags['dry-run'] ? drop : []
    const result: BackupsResult = {
      backups,
      database: target.conn.database,
      dir,
      dropped: dropped.map((d) => d.name),
      dryRun: flags['dry-run'],
      kept,
      ok: true,
      pruned: pruned.map((b) => b.file),
      serverProblem,
      wouldDrop: wouldDrop.map((d) => d.name),
      wouldPrune: wouldPrune.map((b) => b.file),
    }
    if (this.jsonMode) return result
    for (const b of wouldPrune) this.say(messages.getMessage('info.WouldDelete', [b.file]))
    for (const d of wouldDrop) this.say(messages.getMessage('info.WouldDrop', [d.name]))
    if (pruning || flags['drop-kept']) {
      const protectedCount = backups.filter((b) => b.protectedBecause).length
      this.say(
        flags['dry-run']
          ? messages.getMessage('info.DryRun', [wouldPrune.length, wouldDrop.length])
          : protectedCount
            ? messages.getMessage('info.Removed.protected', [pruned.length, dropped.length, protectedCount])
            : messages.getMessage('info.Removed', [pruned.length, dropped.length]),
      )
    }
    return result
  }

  private printList(dir: string, backups: BackupEntry[], kept: KeptDatabase[] | null, serverProblem: string | null): void {
    if (this.jsonMode) return
    this.say(messages.getMessage('info.Backups', [dir, backups.length]))
    for (const b of backups) {
      const verified =
        b.verified === null
          ? messages.getMessage('info.Backup.noManifest')
          : b.verified
            ? messages.getMessage('info.Backup.verified')
            : messages.getMessage('info.Backup.mismatch')
      this.say(
        `  ${path.basename(b.file).padEnd(36)} ${fmtBytes(b.bytes).padStart(9)} ${`${b.ageDays} d`.padStart(8)}  ${(b.database ?? '?').padEnd(20)} ledger ${String(b.ledgerVersion ?? '?').padEnd(3)} ${b.purpose.padEnd(13)} ${verified}${b.protectedBecause ? messages.getMessage('info.Backup.protected', [b.protectedBecause]) : ''}`,
      )
    }
    if (kept === null) {
      this.say(messages.getMessage('info.Kept.unlisted', [serverProblem ?? messages.getMessage('info.Kept.noServer')]))
    } else {
      this.say(messages.getMessage('info.Kept', [kept.length]))
      for (const k of kept)
        this.say(
          `  ${k.name.padEnd(50)} ${fmtBytes(k.bytes).padStart(9)}  kept ${k.keptAt}${k.connections ? messages.getMessage('info.Kept.sessions', [k.connections]) : ''}`,
        )
    }
  }

  private note(line: string): void {
    if (!this.jsonMode) process.stderr.write(`${line}\n`)
  }
}
