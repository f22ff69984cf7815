import fs from 'node:fs/promises'
import path from 'node:path'

import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import {type BackupPurpose, type ListedBackup, type Manifest, MANIFEST_SUFFIX, readManifest, SIDECAR_DIR} from './manifest.js'

const messages = loadMessages('lib.archive.listing')

/** Backups with a readable manifest in `dir` (optionally of one database), newest first. */
export async function listBackups(dir: string, database?: string): Promise<ListedBackup[]> {
  const out: ListedBackup[] = []
  for (const manifestFile of await manifestFilesIn(dir)) {
    let manifest: Manifest
    try {
      manifest = await readManifest(manifestFile)
    } catch {
      continue
    }
    if (database !== undefined && manifest.database !== database) continue
    const file = path.join(dir, manifest.file)
    if (path.basename(manifestFile) !== manifest.file + MANIFEST_SUFFIX) continue
    if (
      !(await fs.access(file).then(
        () => true,
        () => false,
      ))
    )
      continue
    out.push({file, manifest, manifestFile})
  }
  return out.sort((a, b) => b.manifest.created_at.localeCompare(a.manifest.created_at) || b.file.localeCompare(a.file))
}

/** Manifest files of `dir`: in its sidecar folder, then any an older version left beside the dumps. */
async function manifestFilesIn(dir: string): Promise<string[]> {
  const files: string[] = []
  for (const folder of [path.join(dir, SIDECAR_DIR), dir]) {
    let names: string[]
    try {
      names = await fs.readdir(folder)
    } catch (error) {
      if ((error as {code?: string}).code === 'ENOENT') continue
      throw new UserError(messages.getMessage('error.cannot-list', [folder, (error as Error).message]))
    }
    files.push(...names.filter((n) => n.endsWith(MANIFEST_SUFFIX)).map((n) => path.join(folder, n)))
  }
  return files
}

export async function newestBackup(dir: string, database: string, purpose?: BackupPurpose | string): Promise<ListedBackup | undefined> {
  const all = await listBackups(dir, database)
  return all.find((b) => purpose === undefined || b.manifest.purpose === purpose)
}

export interface BackupChoice {
  chosen?: ListedBackup
  /** Pre-migration backups of this database that were passed over, newest first, each with the reason. */
  passedOver: Array<{backup: ListedBackup; why: string}>
}

/**
 * The backup a restore rollback goes back to. By default: the newest pre-migration backup taken while the
 * database had none of the upgrade (its ledger below `first`) and, when our ledger says when the first of
 * them was applied, taken before that. A backup a rerun took after an interrupted run had applied 013 is at 013
 * and is never chosen. With `atVersion`: the newest pre-migration backup taken at exactly that version (and
 * before `nextAppliedAt`, when known, the time the migration after it was applied).
 */
export async function chooseRollbackBackup(dir: string, database: string, o: {first: number; atVersion?: number; appliedAt?: Date}): Promise<BackupChoice> {
  const all = (await listBackups(dir, database)).filter((b) => b.manifest.purpose === 'pre-migration')
  const passedOver: BackupChoice['passedOver'] = []
  for (const backup of all) {
    const v = backup.manifest.ledger_version
    const fits = o.atVersion === undefined ? v === null || v < o.first : v === o.atVersion
    if (!fits) {
      passedOver.push({backup, why: `taken at migration ${v ?? 'none'}`})
      continue
    }
    // Compared on the server's clock only (a manifest without snapshot_at is not compared: client clocks drift).
    const snapshotAt = backup.manifest.snapshot_at
    if (o.appliedAt && snapshotAt && Date.parse(snapshotAt) > o.appliedAt.getTime()) {
      passedOver.push({backup, why: `taken at ${snapshotAt}, after the migration it should precede was applied (${o.appliedAt.toISOString()})`})
      continue
    }
    return {chosen: backup, passedOver}
  }
  return {passedOver}
}
