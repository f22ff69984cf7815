/**
 * Splits a migration file into statements (quotes, dollar quotes, comments and nested block comments are
 * understood) and says how each must run. The runner never sends a whole file at once: postgres.js would
 * run a multi-statement string as one implicit transaction, where CREATE INDEX CONCURRENTLY fails.
 */
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.migrations.statements')

export type RunMode =
  /** Inside the file's single transaction, with its ledger rows. */
  | 'transaction'
  /** Alone, outside any transaction (CREATE/DROP INDEX CONCURRENTLY). */
  | 'concurrent'
  /** Alone, in its own short transaction (ALTER TABLE … VALIDATE CONSTRAINT, D3). */
  | 'validate'

export interface Statement {
  sql: string
  /** 1-based line of the statement's first character in its file. */
  line: number
  mode: RunMode
  /** One line for messages: "CREATE INDEX CONCURRENTLY idx_messages_encrypted ON nchat_messages". */
  summary: string
}

export function splitStatements(text: string): Array<{sql: string; line: number}> {
  const out: Array<{sql: string; line: number}> = []
  let start = 0
  let i = 0
  const n = text.length
  const push = (end: number) => {
    const chunk = text.slice(start, end)
    const trimmed = stripComments(chunk).trim()
    if (trimmed) {
      const lead = chunk.length - chunk.trimStart().length
      const firstCode = start + lead + leadingCommentLength(chunk.slice(lead))
      out.push({line: lineAt(text, firstCode), sql: text.slice(firstCode, end).trim()})
    }
  }

  while (i < n) {
    const c = text[i]
    const next = text[i + 1]
    if (c === '-' && next === '-') {
      const eol = text.indexOf('\n', i)
      i = eol === -1 ? n : eol + 1
    } else if (c === '/' && next === '*') {
      let depth = 1
      i += 2
      while (i < n && depth > 0) {
        if (text[i] === '/' && text[i + 1] === '*') {
          depth++
          i += 2
        } else if (text[i] === '*' && text[i + 1] === '/') {
          depth--
          i += 2
        } else i++
      }
      if (depth > 0) throw new SyntaxError(messages.getMessage('error.UnterminatedComment', [lineAt(text, start)]))
    } else if (c === "'" || c === '"') {
      const startQuote = i
      i++
      while (i < n) {
        if (text[i] === c) {
          if (text[i + 1] === c) {
            i += 2
            continue
          }
          break
        }
        // E'' strings allow backslash escapes; a backslash before a quote never ends a standard string, so
        // skipping it is only done for E-strings.
        if (text[i] === '\\' && c === "'" && /[eE]/.test(text[startQuote - 1] ?? '')) i++
        i++
      }
      if (i >= n)
        throw new SyntaxError(
          c === "'"
            ? messages.getMessage('error.UnterminatedString', [lineAt(text, startQuote)])
            : messages.getMessage('error.UnterminatedIdentifier', [lineAt(text, startQuote)]),
        )
      i++
    } else if (c === '$') {
      const m = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(text.slice(i, i + 64))
      if (m && !/[A-Za-z0-9_]/.test(text[i - 1] ?? '')) {
        const tag = m[0]
        const close = text.indexOf(tag, i + tag.length)
        if (close === -1) throw new SyntaxError(messages.getMessage('error.UnterminatedDollarQuote', [tag, lineAt(text, i)]))
        i = close + tag.length
      } else i++
    } else if (c === ';') {
      push(i + 1)
      start = i + 1
      i++
    } else i++
  }
  push(n)
  return out
}

function lineAt(text: string, index: number): number {
  let line = 1
  for (let k = 0; k < index && k < text.length; k++) if (text[k] === '\n') line++
  return line
}

function leadingCommentLength(s: string): number {
  let i = 0
  for (;;) {
    const rest = s.slice(i)
    const ws = rest.length - rest.trimStart().length
    i += ws
    if (s.startsWith('--', i)) {
      const eol = s.indexOf('\n', i)
      i = eol === -1 ? s.length : eol + 1
    } else if (s.startsWith('/*', i)) {
      let depth = 0
      do {
        if (s.startsWith('/*', i)) {
          depth++
          i += 2
        } else if (s.startsWith('*/', i)) {
          depth--
          i += 2
        } else i++
      } while (depth > 0 && i < s.length)
    } else return i
  }
}

/** Code with comments removed (string contents kept as they are); used for classification only. */
export function stripComments(sql: string): string {
  return sql.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/--[^\n]*/g, ' ')
}

export function classify(sql: string): RunMode {
  const code = stripComments(sql).replace(/\s+/g, ' ').trim().toUpperCase()
  if (/^(CREATE (UNIQUE )?INDEX|DROP INDEX|REINDEX)\b.*\bCONCURRENTLY\b/.test(code)) return 'concurrent'
  if (/^ALTER TABLE\b.*\bVALIDATE CONSTRAINT\b/.test(code)) return 'validate'
  return 'transaction'
}

export function summarize(sql: string): string {
  const code = stripComments(sql).replace(/\s+/g, ' ').trim().replace(/;$/, '')
  if (/^DO\b/i.test(code)) return 'DO block'
  const head = code.split(/\s(?:AS|\()\s?/i)[0]
  return head.length > 110 ? `${head.slice(0, 107)}…` : head
}

export function parseStatements(text: string): Statement[] {
  return splitStatements(text).map(({line, sql}) => ({line, mode: classify(sql), sql, summary: summarize(sql)}))
}

/** Existing tables a statement names (ALTER TABLE x, REFERENCES x, ON x, DROP TABLE x), lower-cased, unqualified. */
export function referencedTables(sql: string): string[] {
  const code = stripComments(sql)
  const names = new Set<string>()
  const re =
    /\b(?:ALTER\s+TABLE(?:\s+IF\s+EXISTS)?(?:\s+ONLY)?|REFERENCES|\bON(?:\s+ONLY)?|DROP\s+TABLE(?:\s+IF\s+EXISTS)?)\s+("?[A-Za-z_][A-Za-z0-9_$]*"?(?:\."?[A-Za-z_][A-Za-z0-9_$]*"?)?)/gi
  for (const m of code.matchAll(re)) {
    const parts = m[1].split('.')
    const name = parts[parts.length - 1].replaceAll('"', '')
    if (!/^(delete|update|true|false|conflict|commit)$/i.test(name)) names.add(name.toLowerCase())
  }
  return [...names]
}

const CONCURRENT_INDEX = /INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"?([A-Za-z_][A-Za-z0-9_]*)"?/i
const VALIDATED_CONSTRAINT = /VALIDATE\s+CONSTRAINT\s+"?([A-Za-z_][A-Za-z0-9_]*)"?/i

/** The index a CREATE INDEX CONCURRENTLY statement builds (undefined for anything else). */
export function concurrentIndexName(s: Statement): string | undefined {
  if (s.mode !== 'concurrent' || !/^\s*CREATE/i.test(s.sql)) return undefined
  return CONCURRENT_INDEX.exec(s.sql)?.[1]?.toLowerCase()
}

/** The constraint an ALTER TABLE … VALIDATE CONSTRAINT statement validates. */
export function validatedConstraintName(s: Statement): string | undefined {
  return s.mode === 'validate' ? VALIDATED_CONSTRAINT.exec(s.sql)?.[1]?.toLowerCase() : undefined
}
