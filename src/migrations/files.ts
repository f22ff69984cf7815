import {createHash} from 'node:crypto'
import {existsSync, readdirSync, readFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import {parseStatements, type Statement} from './statements.js'

const messages = loadMessages('lib.migrations.files')

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
  if (!existsSync(dir)) throw new UserError(messages.getMessage('error.NoFolder', [dir]), {hint: messages.getMessage('error.NoFolder.hint')})
  const names = readdirSync(dir)
  const sums = readChecksumList(dir)
  const read = (name: string) => {
    const full = path.join(dir, name)
    const bytes = readFileSync(full)
    const checksum = sha256(bytes)
    if (sums) {
      const expected = sums.get(name)
      if (!expected)
        throw new UserError(messages.getMessage('error.NotListed', [full, CHECKSUM_FILE]), {
          hint: messages.getMessage('error.NotListed.hint'),
        })
      if (expected !== checksum) {
        throw new UserError(messages.getMessage('error.Modified', [full, CHECKSUM_FILE]), {
          hint: messages.getMessage('error.Modified.hint'),
        })
      }
    }
    let statements: Statement[]
    try {
      statements = parseStatements(bytes.toString('utf8'))
    } catch (error) {
      throw new UserError(messages.getMessage('error.Unparsable', [full, (error as Error).message]))
    }
    if (statements.length === 0) throw new UserError(messages.getMessage('error.NoStatement', [full]))
    return {checksum, file: full, statements}
  }

  const byVersion = new Map<number, MigrationFile>()
  for (const name of names.sort()) {
    const m = UP.exec(name)
    if (!m) continue
    const version = Number(m[1])
    if (byVersion.has(version)) throw new UserError(messages.getMessage('error.DuplicateVersion', [version, dir]))
    const downName = `${m[1]}_${m[2]}.down.sql`
    if (!names.includes(downName))
      throw new UserError(messages.getMessage('error.NoDownFile', [name, downName, dir]), {hint: messages.getMessage('error.NoDownFile.hint')})
    const up = read(name)
    const down = read(downName)
    checkLayout(up.statements, up.file)
    if (down.statements.some((s) => s.mode !== 'transaction')) {
      throw new UserError(messages.getMessage('error.DownNotTransactional', [down.file]))
    }
    byVersion.set(version, {...up, down, name: name.replace(/\.sql$/, ''), version})
  }
  for (const name of names) {
    const m = DOWN.exec(name)
    if (m && !names.includes(`${m[1]}_${m[2]}.sql`)) throw new UserError(messages.getMessage('error.DownWithoutUp', [name, dir]))
  }
  const list = [...byVersion.values()].sort((a, b) => a.version - b.version)
  if (list.length === 0) throw new UserError(messages.getMessage('error.NoMigrations', [dir]))
  return list
}

/** The runner's contract: one transactional block, then the statements that run alone. */
function checkLayout(statements: Statement[], file: string): void {
  let seenAlone = false
  for (const s of statements) {
    if (s.mode !== 'transaction') seenAlone = true
    else if (seenAlone) {
      throw new UserError(messages.getMessage('error.StatementAfterAlone', [file, s.line, s.summary]), {
        hint: messages.getMessage('error.StatementAfterAlone.hint'),
      })
    }
  }
}
