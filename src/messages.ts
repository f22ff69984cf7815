import {readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'

/**
 * The commands' texts (help, summary lines, errors) live in messages/<bundle>.md, as the Salesforce CLI plugins keep
 * theirs: reviewed and translated apart from the code. A bundle is a list of sections, each a heading `# key` (one
 * word: letters, digits, `.`, `-`, `_`) and the text below it up to the next such heading; blank lines around a text
 * are not part of it. `%s` in a text is replaced by the values given, in order. A key that is not there, or a
 * different number of values than the text has `%s`, is a programming error: it throws (test/unit/messages.test.ts
 * checks every key the code asks for).
 */

/** messages/ in the package root: one folder up from src/ (tests) and from dist/ (the built and installed plugin). */
export const MESSAGES_DIR = fileURLToPath(new URL('../messages/', import.meta.url))

const HEADING = /^# ([\w.-]+)\s*$/

/** The sections of one bundle's text, key → text. */
export function parseMessages(text: string, file = 'messages'): Map<string, string> {
  const sections = new Map<string, string>()
  let key: string | undefined
  let lines: string[] = []
  const close = () => {
    if (key === undefined) {
      if (lines.some((l) => l.trim() !== '')) throw new Error(`${file}: text before the first "# key" heading`)
      return
    }
    while (lines.length > 0 && lines[0].trim() === '') lines.shift()
    while (lines.length > 0 && lines[lines.length - 1].trim() === '') lines.pop()
    if (sections.has(key)) throw new Error(`${file}: "# ${key}" appears twice`)
    sections.set(key, lines.join('\n'))
  }
  for (const line of text.replaceAll('\r\n', '\n').split('\n')) {
    const heading = HEADING.exec(line)
    if (!heading) {
      lines.push(line)
      continue
    }
    close()
    key = heading[1]
    lines = []
  }
  close()
  return sections
}

export class Messages {
  constructor(
    readonly bundle: string,
    private readonly sections: Map<string, string>,
  ) {}

  /** The text of `key` with each `%s` replaced by the next of `tokens`. */
  getMessage(key: string, tokens: Array<number | string> = []): string {
    const text = this.raw(key)
    const wanted = text.split('%s').length - 1
    if (wanted !== tokens.length) {
      throw new Error(`messages/${this.bundle}.md: "# ${key}" takes ${wanted} value(s), the code gave ${tokens.length}`)
    }
    let i = 0
    return text.replaceAll('%s', () => String(tokens[i++]))
  }

  /** A section written as a list (`- item`, continuation lines indented by two spaces): its items. Examples use it. */
  getMessages(key: string): string[] {
    const items: string[][] = []
    for (const line of this.raw(key).split('\n')) {
      if (line.startsWith('- ')) items.push([line.slice(2)])
      else if (items.length > 0 && (line.startsWith('  ') || line.trim() === '')) items[items.length - 1].push(line.slice(2))
      else throw new Error(`messages/${this.bundle}.md: "# ${key}" is not a list ("- " items): ${line}`)
    }
    return items.map((item) => item.join('\n').trimEnd())
  }

  keys(): string[] {
    return [...this.sections.keys()]
  }

  private raw(key: string): string {
    const text = this.sections.get(key)
    if (text === undefined) throw new Error(`messages/${this.bundle}.md has no "# ${key}"`)
    return text
  }
}

const loaded = new Map<string, Messages>()

/** messages/<bundle>.md, read once (synchronously: commands ask for their help texts while their class is defined). */
export function loadMessages(bundle: string): Messages {
  let messages = loaded.get(bundle)
  if (!messages) {
    const file = `${MESSAGES_DIR}${bundle}.md`
    messages = new Messages(bundle, parseMessages(readFileSync(file, 'utf8'), `messages/${bundle}.md`))
    loaded.set(bundle, messages)
  }
  return messages
}
