import {existsSync, readFileSync} from 'node:fs'
import path from 'node:path'

import {UserError} from '../errors.js'

/** The files nself layers, lowest precedence first. `--env-file` is read last and wins. */
export const NSELF_ENV_FILES = ['.env', '.env.dev', '.env.local'] as const

export interface EnvLayer {
  values: Record<string, string>
  /** For each key, the file it came from (for `status`). */
  sources: Record<string, string>
  files: string[]
}

/**
 * Parse one dotenv file the way nself's shell loader reads it: KEY=VALUE, optional `export`, single or double
 * quotes, `#` comments, and ${VAR} / ${VAR:-default} expansion from earlier keys and the process env.
 */
export function parseEnvFile(text: string, known: Record<string, string> = {}): Record<string, string> {
  const out: Record<string, string> = {}
  const lookup = (name: string) => out[name] ?? known[name] ?? process.env[name]
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim()
    if (!line || line.startsWith('#')) continue
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line)
    if (!m) continue
    const [, key, rest] = m
    let value: string
    if (rest.startsWith("'")) {
      const end = rest.indexOf("'", 1)
      value = end === -1 ? rest.slice(1) : rest.slice(1, end)
    } else if (rest.startsWith('"')) {
      const end = rest.indexOf('"', 1)
      value = expand(end === -1 ? rest.slice(1) : rest.slice(1, end), lookup)
    } else {
      value = expand(rest.replace(/\s+#.*$/, '').trim(), lookup)
    }
    out[key] = value
  }
  return out
}

function expand(value: string, lookup: (name: string) => string | undefined): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (_all, braced: string | undefined, fallback: string | undefined, bare: string | undefined) => {
      const v = lookup((braced ?? bare)!)
      return v === undefined || v === '' ? (fallback ?? '') : v
    })
}

export function readNselfEnv(projectDir: string, extraFile?: string): EnvLayer {
  const layer: EnvLayer = {files: [], sources: {}, values: {}}
  const candidates: string[] = NSELF_ENV_FILES.map((f) => path.join(projectDir, f))
  if (extraFile) {
    const resolved = path.resolve(extraFile)
    if (!existsSync(resolved)) throw new UserError(`The env file ${resolved} given by --env-file does not exist.`)
    candidates.push(resolved)
  }

  for (const file of candidates) {
    if (!existsSync(file)) continue
    let text: string
    try {
      text = readFileSync(file, 'utf8')
    } catch (error) {
      throw new UserError(`Cannot read the env file ${file}: ${(error as Error).message}.`)
    }
    const parsed = parseEnvFile(text, layer.values)
    for (const [k, v] of Object.entries(parsed)) {
      layer.values[k] = v
      const rel = path.relative(projectDir, file)
      layer.sources[k] = rel.startsWith('..') ? file : rel
    }
    layer.files.push(file)
  }
  return layer
}
