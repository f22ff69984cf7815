import {execFile} from 'node:child_process'
import {cpSync, mkdtempSync, rmSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {promisify} from 'node:util'

import {loadMigrations, type MigrationFile} from '../../src/migrations/files.js'
import {connect as engineConnect, type Sql} from '../../src/connection/connect.js'
import {ADMIN, MIGRATIONS_DIR} from './fixture.js'

const execFileP = promisify(execFile)

export const CONN = {database: 'postgres', host: ADMIN.host, port: ADMIN.port, user: ADMIN.user}

export function engineSql(database: string): Sql {
  return engineConnect({...CONN, database})
}

export function packaged(): MigrationFile[] {
  return loadMigrations(MIGRATIONS_DIR)
}

/** A writable copy of the migrations folder (without SHA256SUMS unless kept), for tests that edit files. */
export function copyMigrations(keepSums = false): {dir: string; cleanup: () => void} {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'e2ee-migr-'))
  cpSync(MIGRATIONS_DIR, dir, {recursive: true})
  if (!keepSums) rmSync(path.join(dir, 'SHA256SUMS'), {force: true})
  return {cleanup: () => rmSync(dir, {force: true, recursive: true}), dir}
}

/** Schema-only dump without our own ledger schema (kept on purpose as history), for before/after compares. */
export async function appSchemaDump(db: string): Promise<string> {
  const {stdout} = await execFileP(
    'pg_dump',
    ['--schema-only', '--no-owner', '--exclude-schema=nself_e2ee', '-h', ADMIN.host, '-p', String(ADMIN.port), '-U', ADMIN.user, db],
    {maxBuffer: 64 * 1024 * 1024},
  )
  return stdout
    .split('\n')
    .filter((l) => !/^--/.test(l) && !/^SET /.test(l) && !/^SELECT pg_catalog\.set_config/.test(l) && !/^\\(un)?restrict\b/.test(l) && l.trim() !== '')
    .join('\n')
}

export const silent = () => {}
