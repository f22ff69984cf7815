import fs from 'node:fs/promises'
import path from 'node:path'

import {firstLine, UserError} from '../errors.js'
import {versionNumber} from '../migrations/ledger.js'
import type {PgTools} from '../connection/tools.js'
import {findManifestFor, type Manifest} from '../archive/manifest.js'
import {readToc} from '../archive/toc.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.steps.nself-dumps')

/**
 * nself's own backups (`nself db backup`: `backups/<Project>_<YYYYMMDD_HHMMSS>.dump`, pg_dump -Fc, no manifest)
 * as rollback sources. Without our manifest a dump is judged by reading it: its table of contents names the
 * database and when it was made, and the schema_migrations rows in it say which migration it holds.
 */

export interface PlainDump {
  file: string
  database: string
  createdAt: Date
  /** The highest version in the dump's schema_migrations data; null when it has none. */
  ledgerVersion: number | null
}

/** pg_dump writes "Archive created at 2026-11-24 23:40:01 UTC" in its own time zone. */
export function parseArchiveTime(text: string | undefined): Date | undefined {
  const m = /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})(?: (\S+))?$/.exec((text ?? '').trim())
  if (!m) return undefined
  const utc = !m[3] || /^(UTC|GMT|Z)$/i.test(m[3])
  const d = new Date(`${m[1]}T${m[2]}${utc ? 'Z' : ''}`)
  return Number.isNaN(d.getTime()) ? undefined : d
}

/** The versions in the dump's schema_migrations data (any schema), read with pg_restore, no server needed. */
export async function readDumpLedgerVersion(tools: PgTools, file: string): Promise<number | null> {
  const args = ['--data-only', '--table=schema_migrations', '-f', '-']
  const {stdout} = await (tools.container
    ? tools.run('pg_restore', args, null, {inputFile: file, maxBuffer: 64 * 1024 * 1024})
    : tools.run('pg_restore', [...args, file], null, {maxBuffer: 64 * 1024 * 1024}))
  let inCopy = false
  const versions: number[] = []
  for (const line of String(stdout).split('\n')) {
    if (/^COPY \S*schema_migrations \(/.test(line)) {
      inCopy = /\(version[,)]/.test(line)
      continue
    }
    if (line === '\\.') {
      inCopy = false
      continue
    }
    if (inCopy) {
      const v = versionNumber(line.split('\t')[0])
      if (v !== undefined) versions.push(v)
    }
  }
  return versions.length > 0 ? Math.max(...versions) : null
}

export async function describePlainDump(tools: PgTools, file: string): Promise<PlainDump> {
  const toc = await readToc(tools, file)
  const stat = await fs.stat(file)
  return {
    createdAt: parseArchiveTime(toc.header['Archive created at']) ?? stat.mtime,
    database: toc.header.dbname ?? '',
    file,
    ledgerVersion: await readDumpLedgerVersion(tools, file),
  }
}

/** `.dump` files directly in `dir` that have no manifest of ours. */
export async function plainDumpsIn(dir: string): Promise<string[]> {
  let names: string[]
  try {
    names = await fs.readdir(dir)
  } catch (error) {
    if ((error as {code?: string}).code === 'ENOENT') return []
    throw new UserError(messages.getMessage('error.CannotList', [dir, (error as Error).message]))
  }
  const out: string[] = []
  for (const name of names.filter((n) => n.endsWith('.dump')).sort()) {
    const file = path.join(dir, name)
    if (!(await findManifestFor(file))) out.push(file)
  }
  return out
}

export interface RollbackSource {
  file: string
  /** True for a dump without our manifest (read to judge it). */
  plain: boolean
  createdAt: Date
}

/**
 * The newest plain dump (nself's own `nself db backup`, no manifest of ours) that can undo the migration: of the same
 * database, taken before the migration ran (`before`), holding a ledger below `firstMigration`.
 */
export async function newestPlainDumpSource(o: {
  dir: string
  database: string
  tools: PgTools
  before?: Date
  firstMigration: number
  log?: (line: string) => void
}): Promise<RollbackSource | undefined> {
  const candidates: RollbackSource[] = []
  for (const file of await plainDumpsIn(o.dir)) {
    let dump: PlainDump
    try {
      dump = await describePlainDump(o.tools, file)
    } catch (error) {
      o.log?.(messages.getMessage('info.SkippingUnreadable', [file, firstLine(error)]))
      continue
    }
    const why = plainDumpMisfit(dump, o.database, o.firstMigration, o.before)
    if (why) {
      o.log?.(messages.getMessage('info.Skipping', [file, why]))
      continue
    }
    candidates.push({createdAt: dump.createdAt, file, plain: true})
  }
  return candidates.sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime())[0]
}

/** Why a plain dump cannot undo the migration, or undefined when it fits. */
export function plainDumpMisfit(dump: PlainDump, database: string, firstMigration: number, before?: Date): string | undefined {
  if (dump.database !== database)
    return dump.database ? messages.getMessage('misfit.OtherDatabase', [dump.database, database]) : messages.getMessage('misfit.UnnamedDatabase', [database])
  if (dump.ledgerVersion === null) return messages.getMessage('misfit.NoLedger')
  if (dump.ledgerVersion >= firstMigration) return messages.getMessage('misfit.AfterUpgradeBegan', [dump.ledgerVersion])
  if (before && dump.createdAt.getTime() > before.getTime())
    return messages.getMessage('misfit.AfterMigrationRan', [dump.createdAt.toISOString(), before.toISOString()])
  return undefined
}

/**
 * Complete the manifest verifyBackup built from a plain dump's table of contents: refuse it when it is of
 * another database or holds the migration already, and record the ledger version read from its data.
 */
export async function checkPlainDump(tools: PgTools, file: string, manifest: Manifest, database: string, firstMigration: number): Promise<Manifest> {
  if (!manifest.synthesized) return manifest
  const ledgerVersion = await readDumpLedgerVersion(tools, file).catch((error: unknown) => {
    throw new UserError(messages.getMessage('error.Unreadable', [file, firstLine(error)]), {cause: error})
  })
  const why = plainDumpMisfit({createdAt: new Date(manifest.created_at), database: manifest.database, file, ledgerVersion}, database, firstMigration)
  if (why)
    throw new UserError(messages.getMessage('error.CannotUndo', [file, why]), {
      hint: messages.getMessage('error.CannotUndo.hint'),
    })
  return {...manifest, ledger_version: ledgerVersion}
}
