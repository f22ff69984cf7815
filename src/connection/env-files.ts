import {existsSync, readFileSync, statSync} from 'node:fs'
import path from 'node:path'

import dotenv from 'dotenv'

import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.connection.env-files')

/**
 * nself's settings, resolved as today's nself (the Go CLI) resolves them:
 * - the project folder: `backend/` (or `.backend/`) when it holds a `.env` (config.DetectMonorepoRoot);
 * - ENV: the process environment, else `ENV=` in `.env`, else `dev` (config.ResolveEnv);
 * - the cascade, later wins: `.env` → `.env.<ENV>` → `.env.secrets` → `.env.local` (config.EnvCascadeOrder), or
 *   with NSELF_LEGACY_ENV_ORDER set: `.env.dev` → `.env.staging|prod` → `.env.secrets` → `.env.local` → `.env` → `.env.ai`;
 * - variables already in the process environment win over every file (how nself hands a plugin its settings).
 * Each file is read with dotenv plus the thin layer below, so values come out as nself's godotenv reads them.
 */

/** The settings this plugin reads (declared in plugin.json's envVars). */
export const NSELF_SETTINGS = ['PROJECT_NAME', 'POSTGRES_HOST', 'POSTGRES_PORT', 'POSTGRES_DB', 'POSTGRES_USER', 'POSTGRES_PASSWORD'] as const

export const LEGACY_ORDER_VAR = 'NSELF_LEGACY_ENV_ORDER'

export interface EnvLayer {
  values: Record<string, string>
  /** For each key, where it came from (for `status`): a file relative to the project, or "environment (NAME)". */
  sources: Record<string, string>
  /** The env files read, in order. */
  files: string[]
  /** The nself project folder (after the backend/ switch). */
  projectDir: string
  /** Set when the backend/ (or .backend/) folder was chosen. */
  monorepoFrom?: string
  envName: string
  envSource: string
  legacyOrder: boolean
}

const MAX_ENV_FILE = 1 << 20

/** config.DetectMonorepoRoot: `<dir>/backend` or `<dir>/.backend` when it has a `.env`. */
export function detectBackendDir(dir: string): string | undefined {
  for (const candidate of ['backend', '.backend']) {
    const backend = path.join(dir, candidate)
    if (existsSync(path.join(backend, '.env'))) return backend
  }
  return undefined
}

/** Go's strconv.ParseBool, as nself's getEnvBool reads NSELF_LEGACY_ENV_ORDER (anything else: false). */
export function parseGoBool(value: string | undefined): boolean {
  return ['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value ?? '')
}

function normalizeEnvName(name: string): string {
  const n = name.trim().toLowerCase()
  if (n === 'development') return 'dev'
  if (n === 'production') return 'prod'
  return n
}

/** config.EnvCascadeOrder: file names, lowest precedence first. */
export function cascadeOrder(envName: string, legacy: boolean): string[] {
  const name = normalizeEnvName(envName)
  if (legacy) {
    const order = ['.env.dev']
    if (name === 'staging' || name === 'prod') order.push(`.env.${name}`)
    return [...order, '.env.secrets', '.env.local', '.env', '.env.ai']
  }
  const order = ['.env']
  if (name === 'dev' || name === 'local') order.push('.env.dev')
  else if (name === 'staging' || name === 'prod') order.push(`.env.${name}`)
  // A custom environment gets its own layer only when its name is a plain file-name fragment.
  else if (/^[a-z0-9][a-z0-9_-]{0,62}$/.test(name)) order.push(`.env.${name}`)
  return [...order, '.env.secrets', '.env.local']
}

// ---------------------------------------------------------------------------------------------------------
// Parsing: dotenv, then the places where nself's reader (godotenv 1.5) differs

/**
 * Parse one env file's text as nself reads it. dotenv finds the assignments (export, `=` or `:`, quotes,
 * multi-line quoted values, CRLF); the layer then corrects its value where godotenv differs:
 * - unquoted: the value runs to the end of the line and only ` #` (whitespace, then #) starts a comment
 *   (dotenv cuts at any #); backticks are not quotes;
 * - double quotes: `\n`/`\r` become newline/CR, any other `\x` becomes `x` (`"pa\"ss#word"` is `pa"ss#word`);
 * - `$VAR`/`${VAR}` (names of A-Z, 0-9, _) expand in unquoted and double-quoted values from earlier keys of the
 *   same file, then `lookup` (earlier files and the process environment); unknown names become empty; `\$` is a
 *   literal `$`; a `$` not followed by such a name stays (`pa$$word` is `pa$$word`); no `${VAR:-default}`;
 * - single quotes: the text as written.
 */
export function parseEnvText(text: string, lookup: (name: string) => string | undefined = (n) => process.env[n]): Record<string, string> {
  const src = text.replace(/\r\n/g, '\n')
  const parsed = dotenv.parse(src)
  const out: Record<string, string> = {}
  for (const [key, dotenvValue] of Object.entries(parsed)) {
    const raw = lastAssignment(src, key)
    if (raw === undefined) continue
    const find = (name: string) => (name in out ? out[name] : lookup(name))
    const first = raw.trimStart()[0]
    if (first === "'") out[key] = dotenvValue
    else if (first === '"') out[key] = expandVariables(unescapeDoubleQuoted(rawQuoted(raw.trimStart()) ?? dotenvValue), find)
    else out[key] = expandVariables(unquotedValue(raw), find)
  }
  return out
}

/** The text after `KEY=` (or `KEY:`) on the last line assigning KEY. */
function lastAssignment(src: string, key: string): string | undefined {
  const re = new RegExp(`^[ \\t]*(?:export[ \\t]+)?${key.replace(/[.]/g, '\\.')}[ \\t]*[=:](.*)$`, 'gm')
  let last: RegExpExecArray | undefined
  for (const m of src.matchAll(re)) last = m as RegExpExecArray
  if (last === undefined) return undefined
  const value = last[1]
  // A double-quoted value may run over several lines: take the text from here to the end of the file; the
  // quote scanner stops at the closing quote.
  return value.trimStart().startsWith('"') ? src.slice(last.index + last[0].length - value.length) : value
}

/** The body of a double-quoted value: up to the first `"` not preceded by a backslash. */
function rawQuoted(s: string): string | undefined {
  for (let i = 1; i < s.length; i++) {
    if (s[i] === '"' && s[i - 1] !== '\\') return s.slice(1, i)
  }
  return undefined
}

function unquotedValue(raw: string): string {
  const line = raw.split('\n')[0]
  const comment = /[ \t\v\f\r\u0085\u00A0]#/.exec(line)
  return (comment ? line.slice(0, comment.index) : line).replace(/^[ \t\v\f\r]+|[ \t\v\f\r]+$/g, '')
}

function unescapeDoubleQuoted(body: string): string {
  return body.replace(/\\(.)/gs, (all, c: string) => (c === 'n' ? '\n' : c === 'r' ? '\r' : c === '$' ? all : c))
}

function expandVariables(value: string, find: (name: string) => string | undefined): string {
  return value.replace(/(\\)?(\$)(\()?\{?([A-Z0-9_]+)?\}?/g, (all, escaped: string | undefined, _d, paren: string | undefined, name: string | undefined) => {
    if (escaped || paren) return all.slice(1)
    if (name) return find(name) ?? ''
    return all
  })
}

// ---------------------------------------------------------------------------------------------------------

function readEnvFile(file: string, lookup: (name: string) => string | undefined): Record<string, string> {
  let text: string
  try {
    if (statSync(file).size > MAX_ENV_FILE) throw new UserError(messages.getMessage('error.too-large', [file]))
    text = readFileSync(file, 'utf8')
  } catch (error) {
    if (error instanceof UserError) throw error
    throw new UserError(messages.getMessage('error.unreadable', [file, (error as Error).message]))
  }
  if (text.includes('\0')) throw new UserError(messages.getMessage('error.nul-byte', [file]))
  return parseEnvText(text, lookup)
}

export interface ReadEnvOptions {
  /** An extra file named on the command line (--nself-env-file); read after the cascade, it wins over it. */
  extraFile?: string
  /** Default true: switch to backend/ when it holds a .env, as nself does. */
  detectBackend?: boolean
}

export function readNselfEnv(dir: string, options: ReadEnvOptions = {}, env: NodeJS.ProcessEnv = process.env): EnvLayer {
  const given = path.resolve(dir)
  const backend = options.detectBackend === false ? undefined : detectBackendDir(given)
  const projectDir = backend ?? given

  let envName = 'dev'
  let envSource = 'default'
  if (env.ENV) {
    envName = env.ENV
    envSource = 'environment (ENV)'
  } else if (existsSync(path.join(projectDir, '.env'))) {
    const fromFile = readEnvFile(path.join(projectDir, '.env'), (n) => env[n]).ENV
    if (fromFile) {
      envName = fromFile
      envSource = '.env'
    }
  }
  const legacyOrder = parseGoBool(env[LEGACY_ORDER_VAR])

  const layer: EnvLayer = {
    envName: normalizeEnvName(envName),
    envSource,
    files: [],
    legacyOrder,
    monorepoFrom: backend ? given : undefined,
    projectDir,
    sources: {},
    values: {},
  }
  const extra = options.extraFile ? path.resolve(options.extraFile) : undefined
  if (extra && !existsSync(extra)) throw new UserError(messages.getMessage('error.extra-missing', [extra]))

  // godotenv.Overload puts each file into the process environment before the next is read, so a later file's
  // $VAR sees earlier files' values over the real environment.
  const lookup = (name: string) => (name in layer.values ? layer.values[name] : env[name])
  const apply = (file: string) => {
    if (!existsSync(file)) return
    const parsed = readEnvFile(file, lookup)
    const rel = path.relative(projectDir, file)
    for (const [k, v] of Object.entries(parsed)) {
      layer.values[k] = v
      layer.sources[k] = rel.startsWith('..') ? file : rel
    }
    layer.files.push(file)
  }
  for (const name of cascadeOrder(envName, legacyOrder)) apply(path.join(projectDir, name))

  // The process environment wins over the cascade (nself passes a plugin only what is not already set);
  // an extra file named on the command line wins over both.
  for (const name of NSELF_SETTINGS) {
    const value = env[name]
    if (value === undefined) continue
    layer.values[name] = value
    layer.sources[name] = `environment (${name})`
  }
  if (extra) apply(extra)
  return layer
}
