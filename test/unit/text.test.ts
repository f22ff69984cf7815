// The small helpers every module shares: the line of a failure worth showing, sizes, literal text in patterns.
import {describe, expect, it} from 'vitest'

import {firstLine, toUserError, UserError} from '../../src/errors.js'
import {escapeRegExp, fmtBytes} from '../../src/text.js'

describe('firstLine', () => {
  it('takes the line that says "error:" from a tool\'s stderr, without the tool\'s prefix and full stop', () => {
    const failure = Object.assign(new Error('Command failed with exit code 1: pg_restore --list x.dump'), {
      shortMessage: 'Command failed with exit code 1: pg_restore --list x.dump',
      stderr: 'pg_restore: warning: errors ignored on restore: 1\npg_restore: error: could not read from input file: end of file.\n',
    })
    expect(firstLine(failure)).toBe('could not read from input file: end of file')
  })

  it("without an error line takes the tool's last line; without stderr the short message", () => {
    expect(firstLine({stderr: 'progress 1\nError response from daemon: No such container: db\n'})).toBe('Error response from daemon: No such container: db')
    expect(firstLine({message: 'long\nstack', shortMessage: 'Command failed with ENOENT: pg_dump', stderr: ''})).toBe('Command failed with ENOENT: pg_dump')
  })

  it("keeps a UserError's sentence and words a PostgreSQL error as toUserError does", () => {
    expect(firstLine(new UserError('The backup x is empty.'))).toBe('The backup x is empty')
    const pg = Object.assign(new Error('relation "t" does not exist'), {code: '42P01', severity: 'ERROR'})
    expect(firstLine(pg)).toBe(toUserError(pg).message.replace(/\.$/, ''))
    expect(firstLine(pg)).toMatch(/^PostgreSQL error 42P01: relation "t" does not exist$/)
  })

  it("says a lost connection is one, but not a child process's broken pipe", () => {
    const lost = Object.assign(new Error('write CONNECTION_CLOSED 127.0.0.1:5432'), {code: 'CONNECTION_CLOSED'})
    expect(firstLine(lost)).toMatch(/^the connection to PostgreSQL was lost/)
    expect(firstLine(Object.assign(new Error('write EPIPE'), {code: 'EPIPE', stderr: 'pg_dump: error: could not write to output file'}))).toBe(
      'could not write to output file',
    )
  })

  it('turns anything else into its first line', () => {
    expect(firstLine(new Error('first.\nsecond'))).toBe('first')
    expect(firstLine('plain text')).toBe('plain text')
    expect(firstLine(undefined)).toBe('undefined')
  })
})

describe('fmtBytes', () => {
  it('uses the unit that keeps the number short, in powers of 1024', () => {
    expect(fmtBytes(0)).toBe('0 B')
    expect(fmtBytes(1023)).toBe('1023 B')
    expect(fmtBytes(1024)).toBe('1.0 kB')
    expect(fmtBytes(1536)).toBe('1.5 kB')
    expect(fmtBytes(5 * 1024 ** 2)).toBe('5.0 MB')
    expect(fmtBytes(3.25 * 1024 ** 3)).toBe('3.3 GB')
    expect(fmtBytes(2048 * 1024 ** 4)).toBe('2048.0 TB')
  })
})

describe('escapeRegExp', () => {
  it('makes every special character match itself', () => {
    const text = String.raw`/tmp/a.b*c+d?e^f$g{h}i(j)k|l[m]n\o`
    expect(new RegExp(`^${escapeRegExp(text)}$`).test(text)).toBe(true)
    expect(new RegExp(`^${escapeRegExp('a.c')}$`).test('abc')).toBe(false)
  })
})
