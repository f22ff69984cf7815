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

export default class MaintainBackups extends BaseCommand {
  static description = `List the backups this plugin and nself made in the backup folder (size, age, database, ledger version, verified against the manifest), and the databases a restore rollback kept (<db>_pre_rollback_*) with their size.

Prune with --keep N (the newest N of each database) and/or --older-than DAYS, after confirmation; never the newest pre-migration backup of a database at 16, nor the newest backup from before 013 of a database that has 013. Drop the kept databases with --drop-kept, after confirmation.`
  static examples = [
    '<%= config.bin %> db e2ee maintain backups',
    '<%= config.bin %> db e2ee maintain backups --keep 3 --older-than 30',
    '<%= config.bin %> db e2ee maintain backups --drop-kept --yes --json',
  ]
  static flags = {
    'backup-dir': Flags.string({description: 'The backup folder (default: the nself project\'s backups/).'}),
    'drop-kept': Flags.boolean({default: false, description: 'Drop the databases a restore rollback of this database kept.'}),
    'dry-run': Flags.boolean({default: false, description: 'Show what --keep/--older-than/--drop-kept would remove; remove nothing.'}),
    'lock-wait': Flags.integer({default: 60, description: 'Seconds to wait for another nself db e2ee command changing the same database before pruning or dropping.', min: 0}),
    keep: Flags.integer({description: 'Keep the newest N backups of each database; prune the rest (with --older-than: only those also older).', min: 0}),
    'older-than': Flags.integer({description: 'Prune backups older than this many days.', min: 0}),
    verify: Flags.boolean({default: false, description: 'Check each backup\'s sha256 against its manifest (reads every file), not only its size.'}),
  }

  async run(): Promise<void> {
    const flags = await this.parseBase(MaintainBackups)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    const dir = path.resolve(target.backupDir)
    const pruning = flags.keep !== undefined || flags['older-than'] !== undefined
    if ((pruning || flags['drop-kept']) && !flags['dry-run']) assertCanConfirm(flags.yes, pruning ? 'Deleting backups' : 'Dropping kept databases')

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
    const drop = flags['drop-kept'] ? kept ?? [] : []

    this.printList(dir, backups, kept, serverProblem)
    const pruned: BackupEntry[] = []
    const dropped: KeptDatabase[] = []
    if ((prune.length > 0 || drop.length > 0) && !flags['dry-run']) {
      const what = [prune.length ? `delete ${prune.length} backup(s) (${fmtBytes(prune.reduce((s, b) => s + b.bytes, 0))})` : '', drop.length ? `drop ${drop.length} kept database(s) (${drop.map((d) => d.name).join(', ')})` : ''].filter(Boolean).join(' and ')
      for (const b of prune) this.note(`  will delete ${b.file}`)
      if (!(await confirm(this.scope, `${what[0].toUpperCase()}${what.slice(1)}?`, flags.yes))) throw new UserError('Not confirmed; nothing was deleted.')
      // Not while a migrate or rollback of this database runs: it may be about to restore one of these.
      const lock: CommandLock = await acquireCommandLock(target, {command: 'maintain', log: (l) => this.note(l), signal: this.scope.signal, waitMs: flags['lock-wait'] * 1000})
      try {
        for (const b of prune) {
          lock.assertHeld()
          await removeBackup(b)
          pruned.push(b)
        }
        for (const d of drop) {
          lock.assertHeld()
          await dropKeptDatabase(admin!, d, target.conn.database)
          dropped.push(d)
        }
      } finally {
        await lock.release()
      }
    }
    const wouldPrune = flags['dry-run'] ? prune : []
    const wouldDrop = flags['dry-run'] ? drop : []
    if (this.jsonMode) {
      this.printJson({backups, database: target.conn.database, dir, dropped: dropped.map((d) => d.name), dryRun: flags['dry-run'], kept, ok: true,
        pruned: pruned.map((b) => b.file), serverProblem, wouldDrop: wouldDrop.map((d) => d.name), wouldPrune: wouldPrune.map((b) => b.file)})
      return
    }
    for (const b of wouldPrune) this.say(`would delete ${b.file}`)
    for (const d of wouldDrop) this.say(`would drop database ${d.name}`)
    if (pruning || flags['drop-kept']) {
      const protectedCount = backups.filter((b) => b.protectedBecause).length
      this.say(flags['dry-run']
        ? `Dry run: ${wouldPrune.length} backup(s) and ${wouldDrop.length} kept database(s) would be removed.`
        : `Deleted ${pruned.length} backup(s), dropped ${dropped.length} kept database(s)${protectedCount ? `; ${protectedCount} protected backup(s) kept` : ''}.`)
    }
  }

  private printList(dir: string, backups: BackupEntry[], kept: KeptDatabase[] | null, serverProblem: string | null): void {
    if (this.jsonMode) return
    this.say(`Backups in ${dir}: ${backups.length}`)
    for (const b of backups) {
      const verified = b.verified === null ? 'no manifest' : b.verified ? 'verified' : 'DOES NOT MATCH ITS MANIFEST'
      this.say(`  ${path.basename(b.file).padEnd(36)} ${fmtBytes(b.bytes).padStart(9)} ${`${b.ageDays} d`.padStart(8)}  ${(b.database ?? '?').padEnd(20)} ledger ${String(b.ledgerVersion ?? '?').padEnd(3)} ${b.purpose.padEnd(13)} ${verified}${b.protectedBecause ? `  protected: ${b.protectedBecause}` : ''}`)
    }
    if (kept === null) {
      this.say(`Kept databases: not listed (${serverProblem ?? 'no server'}).`)
    } else {
      this.say(`Databases kept by a restore rollback: ${kept.length}`)
      for (const k of kept) this.say(`  ${k.name.padEnd(50)} ${fmtBytes(k.bytes).padStart(9)}  kept ${k.keptAt}${k.connections ? `  ${k.connections} session(s) connected` : ''}`)
    }
  }

  private note(line: string): void {
    if (!this.jsonMode) process.stderr.write(line + '\n')
  }
}

