// The one rule for identifiers from flags and settings, and names cut to PostgreSQL's 63 bytes.
import {describe, expect, it} from 'vitest'

import {UserError} from '../../src/errors.js'
import {isKeptName} from '../../src/maintain/kept.js'
import {fitIdentifier, MAX_IDENTIFIER_BYTES, quoteIdent, validateIdentifier} from '../../src/pg/identifiers.js'
import {newDatabaseName} from '../../src/pg/databases.js'
import {keptDatabaseName} from '../../src/steps/restore.js'

const bytes = (s: string) => Buffer.byteLength(s)

function refusal(name: string, what = 'database'): UserError {
  try {
    validateIdentifier(name, what)
  } catch (error) {
    expect(error).toBeInstanceOf(UserError)
    return error as UserError
  }
  throw new Error(`${JSON.stringify(name)} was accepted`)
}

describe('validateIdentifier', () => {
  it('accepts what the flags have always accepted, and letters of any script up to 63 bytes', () => {
    const ascii63 = 'a'.repeat(MAX_IDENTIFIER_BYTES)
    const multibyte63 = `${'é'.repeat(31)}x` // 31 × 2 bytes + 1
    expect(bytes(multibyte63)).toBe(MAX_IDENTIFIER_BYTES)
    for (const name of ['nchat', 'public', '_x', 'My-App_2', 'a$b', 'données', 'чат', ascii63, multibyte63]) {
      expect(validateIdentifier(name, 'database')).toBe(name)
    }
  })

  it('refuses an empty name, bad characters, quotes and NUL with one sentence naming the thing', () => {
    for (const name of ['', '1abc', '-x', 'a b', 'a.b', 'x"y', "x'y", 'x";drop table t;--', 'a\u0000b', 'a\nb', 'tab\t']) {
      const e = refusal(name, 'schema')
      expect(e.message).toMatch(/^The schema name ".*" is not a valid PostgreSQL identifier for this tool\.$/)
      // biome-ignore lint/suspicious/noControlCharactersInRegex: the test checks that no control character (the NUL, newline or tab of the refused names) reaches the message
      expect(e.message).not.toMatch(/[\u0000-\u001F]/)
      expect(e.hint).toMatch(/at most 63 bytes/)
    }
    expect(refusal('a\u0000b').message).toContain(String.raw`"a\u0000b"`)
  })

  it('refuses 64 bytes, counting bytes and not characters', () => {
    const ascii64 = 'a'.repeat(MAX_IDENTIFIER_BYTES + 1)
    expect(refusal(ascii64).message).toMatch(/^The database name "a+" is 64 bytes long; PostgreSQL keeps only the first 63 bytes of a name\.$/)
    const multibyte64 = 'é'.repeat(32) // 32 characters, 64 bytes
    expect(multibyte64.length).toBeLessThan(MAX_IDENTIFIER_BYTES)
    expect(refusal(multibyte64).message).toMatch(/is 64 bytes long/)
    expect(validateIdentifier('あ'.repeat(21), 'database')).toHaveLength(21) // 3 bytes each: 63
    expect(refusal('あ'.repeat(22)).message).toMatch(/is 66 bytes long/)
  })

  it('shortens a very long name in the sentence', () => {
    const e = refusal('b'.repeat(10_000))
    expect(e.message.length).toBeLessThan(200)
    expect(e.message).toMatch(/is 10000 bytes long/)
  })
})

describe('quoteIdent', () => {
  it('doubles quotes inside the name', () => {
    expect(quoteIdent('x"y')).toBe('"x""y"')
    expect(quoteIdent('My-App')).toBe('"My-App"')
  })
})

describe('names cut to fit', () => {
  const date = new Date(2026, 10, 25, 3, 4, 5)

  it('keeps the whole head when it fits, and cuts it between characters when not', () => {
    expect(fitIdentifier('nchat', '_x')).toBe('nchat_x')
    const suffix = '_e2ee_dryrun_20261125030405'
    for (const head of ['d'.repeat(80), 'é'.repeat(40), `a${'é'.repeat(40)}`, '😀'.repeat(20)]) {
      const name = fitIdentifier(head, suffix)
      expect(bytes(name)).toBeLessThanOrEqual(MAX_IDENTIFIER_BYTES)
      expect(bytes(name)).toBeGreaterThan(MAX_IDENTIFIER_BYTES - 4)
      expect(name.endsWith(suffix)).toBe(true)
      expect(head.startsWith(name.slice(0, -suffix.length))).toBe(true)
      expect(name).not.toContain('\uFFFD')
    }
  })

  it('new and kept database names fit, and a kept name is recognised for its database only', () => {
    for (const db of ['nchat', 'd'.repeat(63), `a${'é'.repeat(31)}`]) {
      expect(bytes(newDatabaseName(db, 'dryrun', date))).toBeLessThanOrEqual(MAX_IDENTIFIER_BYTES)
      const kept = keptDatabaseName(db, date)
      expect(bytes(kept)).toBeLessThanOrEqual(MAX_IDENTIFIER_BYTES)
      expect(isKeptName(kept, db)).toBe(true)
      expect(isKeptName(kept, `${db.slice(0, 2)}zz`)).toBe(false)
    }
    // A cut name belongs to the long database it was cut from, not to a shorter one it starts with.
    const long = `a${'é'.repeat(31)}`
    const kept = keptDatabaseName(long, date)
    expect(isKeptName(kept, long.slice(0, 10))).toBe(false)
    expect(isKeptName(keptDatabaseName('nchat', date), 'nchat_other')).toBe(false)
  })
})
