/**
 * PostgreSQL identifiers that come from flags, settings or names this tool makes: the one rule they must pass,
 * quoting, and cutting a name to fit. PostgreSQL keeps at most 63 bytes of a name (NAMEDATALEN - 1) and cuts a
 * longer one silently, so a longer name would point at another object.
 */
import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.pg.identifiers')

export const MAX_IDENTIFIER_BYTES = 63

/**
 * Letters (any script), digits, "_", "$" and "-", starting with a letter or "_". Every name is quoted when used,
 * so "-" and capitals are safe; quotes, spaces, dots and control characters are refused to keep names readable
 * in messages and unambiguous in `schema.table` text.
 */
const IDENTIFIER = /^[\p{L}_][\p{L}\p{M}\p{Nd}_$-]*$/u

/** `name` itself, or a UserError naming `what` (e.g. "database", "schema") and what is wrong with it. */
export function validateIdentifier(name: string, what: string): string {
  if (!IDENTIFIER.test(name)) {
    throw new UserError(messages.getMessage('error.invalid', [what, shown(name)]), {
      hint: messages.getMessage('hint.invalid', [MAX_IDENTIFIER_BYTES]),
    })
  }
  const bytes = Buffer.byteLength(name)
  if (bytes > MAX_IDENTIFIER_BYTES) {
    throw new UserError(messages.getMessage('error.too-long', [what, shown(name), bytes, MAX_IDENTIFIER_BYTES]), {
      hint: messages.getMessage('hint.too-long', [MAX_IDENTIFIER_BYTES]),
    })
  }
  return name
}

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

/** `head` + `suffix`, with `head` cut (never inside a character) so the whole fits in 63 bytes. */
export function fitIdentifier(head: string, suffix: string): string {
  let out = ''
  for (const ch of head) {
    if (Buffer.byteLength(out + ch + suffix) > MAX_IDENTIFIER_BYTES) break
    out += ch
  }
  return out + suffix
}

/** The name as JSON (control characters escaped), shortened when it would swamp the sentence. */
function shown(name: string): string {
  return JSON.stringify(name.length > 80 ? `${name.slice(0, 60)}…` : name)
}
