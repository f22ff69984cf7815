import fs from 'node:fs/promises'
import path from 'node:path'

import {UserError} from '../errors.js'
import {listBackups} from '../archive/listing.js'
import {type ListedBackup, sha256File} from '../archive/manifest.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.maintain.backups')

/**
 * Housekeeping of what upgrades leave behind in the backup folder: our dumps (with a manifest, read through
 * archive/listing.ts's listBackups, wherever it keeps manifests) and nself's own (`nself db backup`: no manifest).
 */

export interface BackupEntry {
  file: string
  bytes: number
  createdAt: string
  ageDays: number
  /** The database dumped (null for a dump without manifest). */
  database: string | null
  ledgerVersion: number | null
  purpose: string
  madeBy: 'nself-e2ee' | 'nself'
  manifestFile: string | null
  /** Size (and with `deep`, sha256) match the manifest; null without a manifest. */
  verified: boolean | null
  /** Why it is never pruned, or null. */
  protectedBecause: string | null
  /** The group --keep counts in: the database, or for nself's dumps the name before the timestamp. */
  group: string
}

/** What is known of a database the backups are of. */
export type DatabaseState = {state: 'at'; version: number | null} | {state: 'missing'} | {state: 'unknown'; reason: string}

const NSELF_DUMP = /\.(dump|sql|sql\.gz|tar\.gz|backup)$/
const STAMP = /_(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})\.[^/]+$/

function nameTime(file: string): Date | null {
  const m = STAMP.exec(path.basename(file))
  if (!m) return null
  const [, y, mo, d, h, mi, s] = m.map(Number)
  // nself names carry local time (date +%Y%m%d_%H%M%S).
  const t = new Date(y, mo - 1, d, h, mi, s)
  return Number.isNaN(t.getTime()) ? null : t
}

export async function listAllBackups(dir: string, o: {deep?: boolean; now?: number} = {}): Promise<BackupEntry[]> {
  const now = o.now ?? Date.now()
  const ours = await listBackups(dir)
  const entries: BackupEntry[] = []
  for (const b of ours) entries.push(await ourEntry(b, now, Boolean(o.deep)))

  const known = new Set(ours.map((b) => path.resolve(b.file)))
  let names: string[] = []
  try {
    names = await fs.readdir(dir)
  } catch (error) {
    if ((error as {code?: string}).code !== 'ENOENT') throw new UserError(messages.getMessage('error.cannot-list', [dir, (error as Error).message]))
  }
  for (const name of names) {
    const file = path.resolve(dir, name)
    if (!NSELF_DUMP.test(name) || known.has(file)) continue
    const st = await fs.stat(file).catch(() => null)
    if (!st?.isFile()) continue
    const created = nameTime(file) ?? st.mtime
    entries.push({
      ageDays: days(now - created.getTime()),
      bytes: st.size,
      createdAt: created.toISOString(),
      database: null,
      file,
      group: `nself:${name.replace(STAMP, '') || name}`,
      ledgerVersion: null,
      madeBy: 'nself',
      manifestFile: null,
      protectedBecause: null,
      purpose: 'nself backup',
      verified: null,
    })
  }
  return entries.sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.file.localeCompare(a.file))
}

async function ourEntry(b: ListedBackup, now: number, deep: boolean): Promise<BackupEntry> {
  const st = await fs.stat(b.file).catch(() => null)
  let verified = st !== null && st.size === b.manifest.size
  if (verified && deep) verified = (await sha256File(b.file)).sha256 === b.manifest.sha256
  return {
    ageDays: days(now - Date.parse(b.manifest.created_at)),
    bytes: st?.size ?? 0,
    createdAt: new Date(b.manifest.created_at).toISOString(),
    database: b.manifest.database,
    file: path.resolve(b.file),
    group: b.manifest.database,
    ledgerVersion: b.manifest.ledger_version,
    madeBy: 'nself-e2ee',
    manifestFile: b.manifestFile,
    protectedBecause: null,
    purpose: String(b.manifest.purpose),
    verified,
  }
}

const days = (ms: number) => Math.round((ms / 86_400_000) * 10) / 10

/**
 * Marks the backups a rollback needs: per database, the newest pre-migration backup while the database is at
 * 16 (or its state cannot be read), and the newest one taken before 013 (what a rollback to v0.3.0 restores)
 * while the database is at 13 or more (or cannot be read).
 */
export function markProtected(entries: BackupEntry[], states: Map<string, DatabaseState>): void {
  const byDb = new Map<string, BackupEntry[]>()
  for (const e of entries) {
    if (e.madeBy !== 'nself-e2ee' || e.purpose !== 'pre-migration' || e.database === null) continue
    byDb.set(e.database, [...(byDb.get(e.database) ?? []), e])
  }
  for (const [db, list] of byDb) {
    const state = states.get(db) ?? {reason: 'not checked', state: 'unknown'}
    const at = state.state === 'at' ? (state.version ?? 0) : state.state === 'missing' ? -1 : Number.POSITIVE_INFINITY
    const why = state.state === 'unknown' ? `its database ${db} could not be checked (${state.reason})` : `${db} is at ${at}`
    const sorted = [...list].sort((a, b) => b.createdAt.localeCompare(a.createdAt))
    const newest = sorted[0]
    if (at >= 16) newest.protectedBecause = `newest pre-migration backup, and ${why}`
    const beforeUpgrade = sorted.find((e) => e.ledgerVersion !== null && e.ledgerVersion < 13)
    if (beforeUpgrade && at >= 13 && !beforeUpgrade.protectedBecause) {
      beforeUpgrade.protectedBecause = `newest backup from before 013 (what a rollback restores), and ${why}`
    }
  }
}

/**
 * What --keep N / --older-than DAYS would remove: beyond the newest N of each group, and (when both are given)
 * also older than DAYS. Protected backups never.
 */
export function selectPrune(entries: BackupEntry[], o: {keep?: number; olderThanDays?: number}): BackupEntry[] {
  if (o.keep === undefined && o.olderThanDays === undefined) return []
  // entries are newest first: an entry's rank is its place in its group, 0 for the newest
  const seen = new Map<string, number>()
  const rank = entries.map((e) => {
    const n = seen.get(e.group) ?? 0
    seen.set(e.group, n + 1)
    return n
  })
  return entries.filter((e, i) => {
    if (e.protectedBecause) return false
    if (o.keep !== undefined && rank[i] < o.keep) return false
    if (o.olderThanDays !== undefined && !(e.ageDays > o.olderThanDays)) return false
    return true
  })
}

/** Removes a dump, then its manifest (a manifest whose dump is gone is ignored by listings; the reverse would not be). */
export async function removeBackup(e: BackupEntry): Promise<void> {
  try {
    await fs.rm(e.file, {force: true})
    if (e.manifestFile) await fs.rm(e.manifestFile, {force: true})
  } catch (error) {
    throw new UserError(messages.getMessage('error.cannot-delete', [e.file, (error as Error).message]), {
      cause: error,
      hint: messages.getMessage('hint.cannot-delete'),
    })
  }
}
