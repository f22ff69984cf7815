import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'

import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import {RUN_ID} from '../connection/connect.js'
import {type Toc, tocHeader} from './toc.js'

const messages = loadMessages('lib.archive.manifest')

/**
 * The manifest of a dump (README, "Shared with nself's ledger and backups"): what the dump holds (checksum,
 * size, server version, ledger version and the exact row counts of the app's tables, counted in the very
 * snapshot pg_dump dumps), so a restore can be checked against it to the row.
 */

export const MANIFEST_FORMAT = 'nself-e2ee-backup/1'
export const MANIFEST_SUFFIX = '.manifest.json'

// Where our own files go. nself's `backup list` counts every file directly in backups/ and `backup restore
// latest` takes the newest one, but both skip folders (internal/backup/list.go: entry.IsDir() → continue). So
// only finished dumps are written to backups/; manifests and dumps being written live in backups/.nself-e2ee/.
export const SIDECAR_DIR = '.nself-e2ee'

/** The manifest of a dump: `<backups>/.nself-e2ee/<dump name>.manifest.json`. */
export function manifestPathFor(dump: string): string {
  return path.join(path.dirname(dump), SIDECAR_DIR, path.basename(dump) + MANIFEST_SUFFIX)
}

/**
 * Where a dump is written until it is complete and checked (then renamed into backups/). The run id in the name
 * lets the next command prove the writer is gone (steps/leftovers.ts) before removing it.
 */
export function partialPathFor(dump: string): string {
  return path.join(path.dirname(dump), SIDECAR_DIR, `${path.basename(dump)}.${RUN_ID}.partial`)
}

/**
 * The standalone dry run's rehearsal dump (steps/backup.ts takeRehearsalDump): never a backup, so never in backups/
 * itself. Named with the database and the run id, so the next command can prove its writer is gone
 * (steps/leftovers.ts) before removing a copy a kill -9 left.
 */
export function rehearsalPathFor(backupDir: string, database: string): string {
  return path.join(backupDir, SIDECAR_DIR, `rehearsal_${database.replaceAll(/[^A-Za-z0-9_.-]/g, '_')}.${RUN_ID}.dump`)
}

/** A rehearsal dump's file name in the sidecar folder; group 1 is its run id. */
export const REHEARSAL_FILE = /^rehearsal_.*\.([0-9a-f]{8})\.dump$/

/** Older versions of this plugin wrote the manifest beside the dump; still read there. */
export function legacyManifestPathFor(dump: string): string {
  return dump + MANIFEST_SUFFIX
}

/** The manifest file of a dump that exists, in the sidecar folder or (older backups) beside it. */
export async function findManifestFor(dump: string): Promise<string | undefined> {
  for (const candidate of [manifestPathFor(dump), legacyManifestPathFor(dump)]) {
    if (
      await fs.access(candidate).then(
        () => true,
        () => false,
      )
    )
      return candidate
  }
  return undefined
}

export async function ensureSidecarDir(backupDir: string): Promise<void> {
  await fs.mkdir(path.join(backupDir, SIDECAR_DIR), {mode: 0o700, recursive: true})
}

/** 'rehearsal': the in-memory manifest of a rehearsal dump, never written to disk (it is no backup). */
export type BackupPurpose = 'pre-migration' | 'pre-rollback' | 'dryrun' | 'manual' | 'external' | 'rehearsal'

export interface Manifest {
  format: typeof MANIFEST_FORMAT
  /** Basename of the dump, in the manifest's folder. */
  file: string
  sha256: string
  size: number
  database: string
  schema: string
  server_version: string
  server_version_num: number
  /** The highest version in schema_migrations, read in the dump's own snapshot. */
  ledger_version: number | null
  /** The server's clock when the dump's snapshot was taken (same clock as the ledgers' timestamps). */
  snapshot_at?: string
  /** Exact `count(*)` of each listed table that existed, in the dump's snapshot; keys are table names in `schema`. */
  row_counts: Record<string, number>
  created_at: string
  pg_dump_major: number
  purpose: BackupPurpose | string
  project?: string
  /** pg_dump's compression option, e.g. "-Z 1" or "--compress=zstd:1". */
  compression?: string
  /** Number of entries in the archive's table of contents. */
  toc_entries?: number
  /** Built from the archive itself because the dump has no manifest (e.g. one made by `nself db backup`). */
  synthesized?: boolean
}

export interface BackupInfo {
  file: string
  manifestFile: string
  manifest: Manifest
  bytes: number
  durationMs: number
}

/** A backup found on disk: what createClone and restoreIntoNewDatabase take. */
export interface ListedBackup {
  file: string
  manifestFile: string
  manifest: Manifest
}

export async function writeManifest(file: string, manifest: Manifest): Promise<void> {
  const tmp = `${file}.partial`
  const fh = await fs.open(tmp, 'w', 0o600)
  try {
    await fh.writeFile(`${JSON.stringify(manifest, null, 2)}\n`)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await fs.rename(tmp, file)
}

export async function sha256File(file: string): Promise<{sha256: string; size: number}> {
  const hash = createHash('sha256')
  let size = 0
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    hash.update(chunk)
    size += chunk.length
  }
  return {sha256: hash.digest('hex'), size}
}

function isManifest(m: unknown): m is Manifest {
  const x = m as Record<string, unknown>
  return (
    typeof x === 'object'
    && x !== null
    && x.format === MANIFEST_FORMAT
    && typeof x.file === 'string'
    && typeof x.sha256 === 'string'
    && /^[0-9a-f]{64}$/.test(x.sha256)
    && typeof x.size === 'number'
    && typeof x.database === 'string'
    && typeof x.schema === 'string'
    && typeof x.row_counts === 'object'
    && x.row_counts !== null
    && Object.values(x.row_counts as object).every((n) => typeof n === 'number')
    && (x.ledger_version === null || typeof x.ledger_version === 'number')
    && typeof x.created_at === 'string'
  )
}

export async function readManifest(manifestFile: string): Promise<Manifest> {
  let text: string
  try {
    text = await fs.readFile(manifestFile, 'utf8')
  } catch (error) {
    if ((error as {code?: string}).code === 'ENOENT') {
      throw new UserError(messages.getMessage('error.missing', [manifestFile]), {
        hint: messages.getMessage('hint.missing'),
      })
    }
    throw new UserError(messages.getMessage('error.unreadable', [manifestFile, (error as Error).message]))
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new UserError(messages.getMessage('error.not-json', [manifestFile]), {hint: messages.getMessage('hint.not-json')})
  }
  if (!isManifest(parsed)) {
    throw new UserError(messages.getMessage('error.not-a-manifest', [manifestFile, MANIFEST_FORMAT]))
  }
  return parsed
}

export function synthesizeManifest(file: string, toc: Toc, sha256: string, size: number): Manifest {
  const created = Date.parse((toc.header['Archive created at'] ?? '').replace(' UTC', 'Z').replace(' ', 'T'))
  const serverVersion = (toc.header['Dumped from database version'] ?? '').split(' ')[0]
  const [maj, min] = serverVersion.split('.').map(Number)
  const dumpMajor = Number((toc.header['Dumped by pg_dump version'] ?? '').split('.')[0]) || 0
  return {
    created_at: Number.isNaN(created) ? new Date(0).toISOString() : new Date(created).toISOString(),
    database: tocHeader(toc, 'dbname') ?? '',
    file: path.basename(file),
    format: MANIFEST_FORMAT,
    ledger_version: null,
    pg_dump_major: dumpMajor,
    purpose: 'external',
    row_counts: {},
    schema: '',
    server_version: serverVersion,
    server_version_num: maj >= 10 ? maj * 10_000 + (min || 0) : 0,
    sha256,
    size,
    synthesized: true,
    toc_entries: toc.entries.length,
  }
}
