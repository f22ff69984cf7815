import {CancelledError, firstLine, UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import type {PgTools} from '../connection/tools.js'
import {redact} from '../text.js'

const messages = loadMessages('lib.archive.toc')

/** The archive's table of contents, as `pg_restore --list` prints it. */

export interface TocEntry {
  line: string
  dumpId: number
  desc: string
  schema: string | null
  /** The tag (object name; for TABLE DATA the table's name). */
  name: string
  owner: string | null
}

export interface Toc {
  entries: TocEntry[]
  header: Record<string, string>
  text: string
}

const MULTI_WORD_DESCS = [
  'MATERIALIZED VIEW DATA',
  'PUBLICATION TABLES IN SCHEMA',
  'TEXT SEARCH CONFIGURATION',
  'TEXT SEARCH DICTIONARY',
  'TEXT SEARCH TEMPLATE',
  'TEXT SEARCH PARSER',
  'FOREIGN DATA WRAPPER',
  'SEQUENCE OWNED BY',
  'DATABASE PROPERTIES',
  'MATERIALIZED VIEW',
  'PUBLICATION TABLE',
  'PROCEDURAL LANGUAGE',
  'CHECK CONSTRAINT',
  'OPERATOR FAMILY',
  'OPERATOR CLASS',
  'EVENT TRIGGER',
  'FOREIGN TABLE',
  'FOREIGN SERVER',
  'FK CONSTRAINT',
  'ACCESS METHOD',
  'LARGE OBJECT',
  'SEQUENCE SET',
  'STATISTICS DATA',
  'TABLE ATTACH',
  'INDEX ATTACH',
  'USER MAPPING',
  'DEFAULT ACL',
  'ROW SECURITY',
  'SHELL TYPE',
  'TABLE DATA',
  'BLOB DATA',
  'BLOB METADATA',
  'DEFAULT',
]

export function parseToc(text: string): Toc {
  const entries: TocEntry[] = []
  const header: Record<string, string> = {}
  for (const line of text.split('\n')) {
    if (line.startsWith(';')) {
      const m = /^;\s+([^:]+):\s*(.*)$/.exec(line)
      if (m) header[m[1].trim()] = m[2].trim()
      continue
    }
    const m = /^(\d+);\s+\d+\s+\d+\s+(.*)$/.exec(line)
    if (!m) continue
    const rest = m[2]
    const desc = MULTI_WORD_DESCS.find((d) => rest === d || rest.startsWith(`${d} `)) ?? rest.split(' ')[0]
    const words = rest
      .slice(desc.length)
      .trim()
      .split(' ')
      .filter((w) => w !== '')
    let schema: string | null = null
    let owner: string | null = null
    let name = ''
    if (words.length >= 3) {
      schema = words[0] === '-' ? null : words[0]
      owner = words[words.length - 1]
      name = words.slice(1, -1).join(' ')
    } else if (words.length === 2) {
      schema = words[0] === '-' ? null : words[0]
      name = words[1]
    } else {
      name = words.join(' ')
    }
    entries.push({desc, dumpId: Number(m[1]), line, name, owner, schema})
  }
  return {entries, header, text}
}

/** A header line of `pg_restore --list` by its name, in any case (PostgreSQL 15 prints `dbname`, others `Dbname`). */
export function tocHeader(toc: Toc, name: string): string | undefined {
  const key = Object.keys(toc.header).find((k) => k.toLowerCase() === name.toLowerCase())
  return key === undefined ? undefined : toc.header[key]
}

export function tableDataKey(schema: string | null, table: string): string {
  return `${schema ?? ''}.${table}`
}

/**
 * `pg_restore --list` of an archive. In docker mode the file is fed on stdin (the listing only reads the
 * table of contents at the start, so nothing is copied into the container).
 */
export async function readToc(tools: PgTools, file: string): Promise<Toc> {
  const run = tools.container
    ? tools.run('pg_restore', ['--list'], null, {inputFile: file, maxBuffer: 256 * 1024 * 1024})
    : tools.run('pg_restore', ['--list', file], null, {maxBuffer: 256 * 1024 * 1024})
  const {stdout} = await run
  const toc = parseToc(String(stdout))
  if (toc.header.Format === undefined || toc.entries.length === 0) {
    throw new Error('the archive lists no entries')
  }
  return toc
}

/** The data a TOC must hold for these tables, or the first one it lacks. */
export function missingTableData(toc: Toc, schema: string, tables: string[]): string | undefined {
  const have = new Set(toc.entries.filter((e) => e.desc === 'TABLE DATA').map((e) => tableDataKey(e.schema, e.name)))
  return tables.find((t) => !have.has(tableDataKey(schema, t)))
}

/** readToc of a backup about to be restored: a failure is one sentence naming the file (the password redacted). */
export async function readBackupToc(tools: PgTools, file: string, during: string, secret?: string): Promise<Toc> {
  try {
    return await readToc(tools, file)
  } catch (error) {
    if (tools.scope.cancelled) throw new CancelledError(during)
    throw new UserError(messages.getMessage('error.unreadable', [file, redact(firstLine(error), secret)]))
  }
}
