import {createHash} from 'node:crypto'
import {existsSync, readdirSync, readFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {UserError} from '../errors.js'
import {parseStatements, type Statement} from './statements.js'

export interface MigrationFile {
  version: number
  /** File name without `.sql`, e.g. "014_e2ee_system". */
  name: string
  file: string
  checksum: string
  statements: Statement[]
  down: {file: string; checksum: string; statements: Statement[]}
}

const UP = /^(\d{3,})_([a-z0-9_]+)\.sql$/
const DOWN = /^(\d{3,})_([a-z0-9_]+)\.down\.sql$/

/** The migrations shipped with the plugin (013–016): `<package>/migrations`. */
export function packagedMigrationsDir(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'migrations')
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex')
}

/** The checksum list shipped beside the packaged files; a file that differs from it was tampered with. */
export const CHECKSUM_FILE = 'SHA256SUMS'

export function readChecksumList(dir: string): Map<string, string> | undefined {
  const file = path.join(dir, CHECKSUM_FILE)
  if (!existsSync(file)) return undefined
  const map = new Map<string, string>()
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^([0-9a-f]{64})\s+\*?(\S+)$/.exec(line.trim())
    if (m) map.set(m[2], m[1])
  }
  return map
}

export function loadMigrations(dir = packagedMigrationsDir()): MigrationFile[] {
  if (!existsSync(dir)) throw new UserError(`The migrations folder ${dir} does not exist.`, {hint: 'Check --migrations-dir.'})
  const names = readdirSync(dir)
  const sums = readChecksumList(dir)
  const read = (name: string) => {
    const full = path.join(dir, name)
    const bytes = readFileSync(full)
    const checksum = sha256(bytes)
    if (sums) {
      const expected = sums.get(name)
      if (!expected)
        throw new UserError(`The migration file ${full} is not listed in ${CHECKSUM_FILE}.`, {
          hint: 'Reinstall the plugin; files must not be added to its migrations folder.',
        })
      if (expected !== checksum) {
        throw new UserError(`The migration file ${full} was modified: its sha256 does not match ${CHECKSUM_FILE}.`, {
          hint: 'Reinstall the plugin (or restore the file); nothing was run.',
        })
      }
    }
    let statements: Statement[]
    try {
      statements = parseStatements(bytes.toString('utf8'))
    } catch (error) {
      throw new UserError(`The migration file ${full} cannot be parsed: ${(error as Error).message}.`)
    }
    if (statements.length === 0) throw new UserError(`The migration file ${full} contains no SQL statement.`)
    return {checksum, file: full, statements}
  }

  const byVersion = new Map<number, MigrationFile>()
  for (const name of names.sort()) {
    const m = UP.exec(name)
    if (!m) continue
    const version = Number(m[1])
    if (byVersion.has(version)) throw new UserError(`Two migration files have version ${version} in ${dir}.`)
    const downName = `${m[1]}_${m[2]}.down.sql`
    if (!names.includes(downName))
      throw new UserError(`The migration ${name} has no down file ${downName} in ${dir}.`, {hint: 'Every migration needs a way back.'})
    const up = read(name)
    const down = read(downName)
    checkLayout(up.statements, up.file)
    if (down.statements.some((s) => s.mode !== 'transaction')) {
      throw new UserError(`The down file ${down.file} uses CONCURRENTLY or VALIDATE; down files must run in one transaction.`)
    }
    byVersion.set(version, {...up, down, name: name.replace(/\.sql$/, ''), version})
  }
  for (const name of names) {
    const m = DOWN.exec(name)
    if (m && !names.includes(`${m[1]}_${m[2]}.sql`)) throw new UserError(`The down file ${name} in ${dir} has no up file.`)
  }
  const list = [...byVersion.values()].sort((a, b) => a.version - b.version)
  if (list.length === 0) throw new UserError(`No migration files (NNN_name.sql) in ${dir}.`)
  return list
}

/** The runner's contract: one transactional block, then the statements that run alone. */
function checkLayout(statements: Statement[], file: string): void {
  let seenAlone = false
  for (const s of statements) {
    if (s.mode !== 'transaction') seenAlone = true
    else if (seenAlone) {
      throw new UserError(`In ${file}, the statement at line ${s.line} (${s.summary}) follows a CONCURRENTLY/VALIDATE statement.`, {
        hint: 'Statements that run outside the transaction must come last in an up file.',
      })
    }
  }
}
