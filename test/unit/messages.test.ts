// The commands' texts live in messages/<bundle>.md (src/messages.ts). Read from the source: every key the code asks
// for is in its bundle, every section of every bundle is asked for, and every bundle is loaded; so a message
// file that loses a section, or one that gains a section nothing prints, fails here rather than at run time.
import fs from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import {describe, expect, it} from 'vitest'

import {loadMessages, Messages, MESSAGES_DIR, parseMessages} from '../../src/messages.js'

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src')

interface Use {
  bundle: string
  file: string
  key: string
}

/** Every `x.getMessage('key'…)` / `x.getMessages('key')` in src/, where `const x = loadMessages('bundle')`. */
function usesInSource(): {bundles: Set<string>; problems: string[]; uses: Use[]} {
  const uses: Use[] = []
  const problems: string[] = []
  const bundles = new Set<string>()
  for (const entry of fs.readdirSync(SRC, {recursive: true, withFileTypes: true})) {
    if (!entry.isFile() || !entry.name.endsWith('.ts') || entry.name === 'messages.ts') continue
    const full = path.join(entry.parentPath, entry.name)
    const file = path.relative(SRC, full)
    const code = fs.readFileSync(full, 'utf8')
    const vars = new Map<string, string>()
    for (const m of code.matchAll(/const (\w+) = loadMessages\((.*?)\)/g)) {
      const literal = /^'([\w.-]+)'$/.exec(m[2])
      if (literal) {
        vars.set(m[1], literal[1])
        bundles.add(literal[1])
      } else problems.push(`${file}: loadMessages(${m[2]}): the bundle must be a string literal`)
    }
    for (const m of code.matchAll(/\b(\w+)\.getMessages?\(\s*([^,)]*)/g)) {
      const bundle = vars.get(m[1])
      if (!bundle) {
        problems.push(`${file}: ${m[0]}: ${m[1]} is not a loadMessages(...) bundle of this file`)
        continue
      }
      const literal = /^'([\w.-]+)'$/.exec(m[2].trim())
      if (literal) uses.push({bundle, file, key: literal[1]})
      else problems.push(`${file}: ${m[0]}: the key must be a string literal (so this test can check it)`)
    }
  }
  return {bundles, problems, uses}
}

const bundleFiles = fs
  .readdirSync(MESSAGES_DIR)
  .filter((f) => f.endsWith('.md'))
  .map((f) => f.replace(/\.md$/, ''))
  .sort()

describe('messages/*.md and the code that prints them', () => {
  const {bundles, problems, uses} = usesInSource()

  it('every key is a literal of a bundle loaded in the same file', () => {
    expect(problems).toEqual([])
    expect(uses.length).toBeGreaterThan(100)
  })

  it('every key the code asks for is in its bundle', () => {
    const missing = uses.filter((u) => !loadMessages(u.bundle).keys().includes(u.key)).map((u) => `${u.file}: messages/${u.bundle}.md has no "# ${u.key}"`)
    expect(missing).toEqual([])
  })

  it('every section of every message file is used, and every message file is loaded', () => {
    expect([...bundles].sort()).toEqual(bundleFiles)
    const unused = bundleFiles.flatMap((bundle) =>
      loadMessages(bundle)
        .keys()
        .filter((key) => !uses.some((u) => u.bundle === bundle && u.key === key))
        .map((key) => `messages/${bundle}.md: "# ${key}" is not used`),
    )
    expect(unused).toEqual([])
  })

  it('each command has its description and examples in its bundle', () => {
    for (const bundle of bundleFiles.filter((b) => b !== 'base' && b !== 'flags' && !b.startsWith('lib.'))) {
      expect(loadMessages(bundle).getMessage('description').length, bundle).toBeGreaterThan(20)
      expect(
        loadMessages(bundle)
          .getMessages('examples')
          .every((e) => e.startsWith('<%= config.bin %> db e2ee ')),
        bundle,
      ).toBe(true)
    }
  })
})

describe('the loader', () => {
  const sample = [
    '# description',
    '',
    'First paragraph.',
    '',
    '  Indented second line, kept as written.',
    '',
    '# examples',
    '',
    '- <%= config.bin %> one',
    '- <%= config.bin %> two',
    '  continued',
    '',
    '# info.Line',
    '',
    '# A crontab comment with spaces is text, not a heading: %s',
    '',
    '# info.Two',
    '',
    '%s of %s (100 %)',
  ].join('\n')
  const m = new Messages('sample', parseMessages(sample))

  it('a section is the text under its heading, without the blank lines around it', () => {
    expect(m.getMessage('description')).toBe('First paragraph.\n\n  Indented second line, kept as written.')
    expect(m.getMessages('examples')).toEqual(['<%= config.bin %> one', '<%= config.bin %> two\ncontinued'])
    expect(m.getMessage('info.Line', ['x'])).toBe('# A crontab comment with spaces is text, not a heading: x')
  })

  it('replaces each %s in order, once (a value holding %s stays as it is)', () => {
    expect(m.getMessage('info.Two', ['%s', 3])).toBe('%s of 3 (100 %)')
  })

  it('a missing key, or the wrong number of values, is a programming error', () => {
    expect(() => m.getMessage('info.Nope')).toThrow(/messages\/sample\.md has no "# info\.Nope"/)
    expect(() => m.getMessage('info.Two', ['1'])).toThrow(/takes 2 value\(s\), the code gave 1/)
    expect(() => loadMessages('no-such-bundle')).toThrow(/ENOENT/)
  })

  it('refuses a section twice and text before the first heading', () => {
    expect(() => parseMessages('# a\n\nx\n\n# a\n\ny\n', 'twice.md')).toThrow(/"# a" appears twice/)
    expect(() => parseMessages('stray\n# a\n\nx\n', 'stray.md')).toThrow(/text before the first/)
  })
})
