/**
 * PostgreSQL identifiers that come from flags, settings or names this tool makes: the one rule they must pass,
 * quoting, and cutting a name to fit. PostgreSQL keeps at most 63 bytes of a name (NAMEDATALEN - 1) and cuts a
 * longer one silently, so a longer name would point at another object.
 */
import {UserError} from '../errors.js'

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
    throw new UserError(`The ${what} name ${shown(name)} is not a valid PostgreSQL identifier for this tool.`, {
      hint: `Use letters, digits, "_", "-" or "$", starting with a letter or "_", at most ${MAX_IDENTIFIER_BYTES} bytes.`,
    })
  }
  const bytes = Buffer.byteLength(name)
  if (bytes > MAX_IDENTIFIER_BYTES) {
    throw new UserError(`The ${what} name ${shown(name)} is ${bytes} bytes long; PostgreSQL keeps only the first ${MAX_IDENTIFIER_BYTES} bytes of a name.`, {
      hint: `Use a name of at most ${MAX_IDENTIFIER_BYTES} bytes (a letter outside ASCII takes 2 to 4).`,
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
