import {execFileSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync} from 'node:fs'
import path from 'node:path'

/**
 * nself's plugin rules, restated from its Go source (nself-org/cli, read not copied) so the tests can hold this
 * package to them without an nself binary:
 * - internal/plugin/manifestv2: types.go, types_shared.go, types_commands.go (the keys a strict v2 decode accepts),
 *   validate.go and validate_commands.go (patterns, enums, core verbs), compat.go (the compatibility projection);
 * - internal/plugin/manifest.go (the permission allowlist every manifest passes);
 * - internal/plugin/download.go extractTarGz, third-party InstallFromURL and cli_binary.go linkCLIBinary.
 */

export const NAME_PATTERN = /^[a-z][a-z0-9-]*$/
export const BINARY_PATTERN = /^nself-[a-z][a-z0-9-]*$/
export const VERSION_PATTERN = /^v?[0-9]+\.[0-9]+\.[0-9]+(-[a-zA-Z0-9.]+)?(\+[a-zA-Z0-9.]+)?$/
export const CORE_VERBS = [
  'init',
  'start',
  'stop',
  'restart',
  'status',
  'logs',
  'doctor',
  'build',
  'reset',
  'clean',
  'add',
  'remove',
  'config',
  'db',
  'backup',
  'deploy',
  'update',
  'license',
  'mcp',
  'exec',
]

const CANONICAL_KEYS = [
  'manifest_version',
  'name',
  'version',
  'description',
  'category',
  'license',
  'maturity',
  'installable',
  'requires',
  'service',
  'commands',
  'schema',
  'migrations',
  'seed',
  'env',
  'routes',
  'docs_url',
]
const SHARED_KEYS = [
  'author',
  'homepage',
  'repository',
  'tags',
  'language',
  'port',
  'health_endpoint',
  'packageManager',
  'framework',
  'minNodeVersion',
  'arch_support',
  'tables',
  'views',
  'apiEndpoints',
  'webhooks',
  'rest_routes',
  'envVars',
  'dependencies',
  'optionalDependencies',
  'systemDependencies',
  'consumes',
  'provides',
  'multiApp',
  'permissions',
  'compat',
  'deprecation',
  'graphql',
  'requiredEntitlements',
  'maxNselfVersion',
  'visibility',
  'updated_at',
  'platform_checksums',
]
const COMPAT_KEYS = [
  'pluginType',
  'binaryName',
  'cliCommands',
  'entryPoint',
  'runtime',
  'cli',
  'minNselfVersion',
  'status',
  'isCommercial',
  'licenseType',
  'requires_license',
  'tier',
]
const FORBIDDEN_KEYS = ['author_public_key', 'bundles', 'checksum', 'signature', 'tier_pair']
const COMMANDS_KEYS = ['command', 'binary', 'summary', 'side_effect', 'output', 'json', 'confirm', 'surface', 'subcommands']
const SUB_KEYS = ['name', 'summary', 'side_effect', 'output', 'json', 'args', 'flags', 'confirm', 'surface']
const FLAG_KEYS = [
  'name',
  'shorthand',
  'type',
  'default',
  'usage',
  'hidden',
  'required',
  'persistent',
  'env',
  'side_effect',
  'json',
  'output',
  'secret',
  'cli_only',
]
const ENV_VAR_KEYS = ['name', 'required', 'description', 'default']

const ENUMS = {
  json: ['none', 'legacy'],
  language: ['go', 'rust', 'typescript', 'python', 'bash'],
  license: ['free', 'licensed'],
  maturity: ['implemented', 'experimental', 'scaffolded', 'planned', 'deferred'],
  output: ['document', 'stream', 'interactive'],
  serviceKind: ['compose', 'cli', 'library'],
  side_effect: ['read', 'write', 'remote', 'destructive'],
  surface: ['all', 'cli-only'],
}

/** manifest.go canonicalPermissions: exact names, and parameterized prefixes that need a safe parameter. */
const EXACT_PERMISSIONS = ['network:internet', 'db:read', 'db:write', 'system:exec']
const PARAM_PERMISSIONS = ['network:plugin', 'secrets:env', 'fs:write', 'ai:provider']

// biome-ignore lint/suspicious/noExplicitAny: a manifest as decoded JSON, walked key by key like nself's Go decoder
type Json = any

function unknownKeys(obj: Json, allowed: string[], where: string, out: string[]): void {
  for (const k of Object.keys(obj ?? {})) if (!allowed.includes(k)) out.push(`${where}: unknown key "${k}" (a strict v2 decode refuses it)`)
}

/** nself's compatibility projection (compat.go Projection) of a v2 manifest. */
export function projection(m: Json): Json {
  const statusOf: Record<string, string> = {experimental: 'experimental', implemented: 'stable', planned: 'planned', scaffolded: 'experimental'}
  const p: Json = {
    binaryName: m.commands ? m.commands.binary : undefined,
    isCommercial: m.license === 'licensed' ? true : undefined,
    licenseType: m.license === 'licensed' ? 'pro' : 'free',
    minNselfVersion: /^\s*(?:>=\s*)?([^\s,<>=!~^|]+)/.exec(m.requires?.nself ?? '')?.[1],
    pluginType: m.commands ? 'cli' : undefined,
    requires_license: m.license === 'licensed' ? true : undefined,
    status: m.maturity === 'deferred' ? (m.deprecation?.state === 'eol' ? 'eol' : 'deprecated') : statusOf[m.maturity],
    tier: m.license === 'licensed' ? 'pro' : 'free',
  }
  return p
}

/** Every rule of nself's v2 manifest reader this file breaks (empty: nself accepts it). */
export function v2Problems(m: Json): string[] {
  const out: string[] = []
  unknownKeys(m, [...CANONICAL_KEYS, ...SHARED_KEYS, ...COMPAT_KEYS], 'plugin.json', out)
  for (const k of FORBIDDEN_KEYS) if (k in m) out.push(`plugin.json: forbidden key "${k}" (E111)`)
  if (m.manifest_version !== 2) out.push('manifest_version must be 2')
  if (!NAME_PATTERN.test(m.name ?? '')) out.push(`name "${m.name}" must match ${NAME_PATTERN}`)
  if (!VERSION_PATTERN.test(m.version ?? '')) out.push(`version "${m.version}" must be semver`)
  for (const k of ['description', 'category']) if (!String(m[k] ?? '').trim()) out.push(`${k} is required`)
  if (!ENUMS.license.includes(m.license)) out.push(`license "${m.license}" must be free or licensed`)
  if (!ENUMS.maturity.includes(m.maturity)) out.push(`maturity "${m.maturity}" is not one of ${ENUMS.maturity.join(', ')}`)
  if (!m.service) out.push('service is required')
  else if (!ENUMS.serviceKind.includes(m.service.kind)) out.push(`service.kind "${m.service.kind}" is not allowed`)
  if (m.language !== undefined && !ENUMS.language.includes(m.language)) out.push(`language "${m.language}" is not allowed`)

  // Permissions: array of strings, each on the allowlist.
  if (m.permissions !== undefined) {
    if (!Array.isArray(m.permissions)) out.push('permissions: this package uses the array form')
    for (const p of m.permissions ?? []) {
      const ok =
        EXACT_PERMISSIONS.includes(p) || PARAM_PERMISSIONS.some((base) => p.startsWith(`${base}:`) && /^[a-zA-Z0-9_\-.:]+$/.test(p.slice(base.length + 1)))
      if (!ok) out.push(`permission "${p}" is not on nself's allowlist`)
    }
  }

  for (const [i, e] of (m.envVars ?? []).entries()) {
    unknownKeys(e, ENV_VAR_KEYS, `envVars[${i}]`, out)
    if (typeof e.name !== 'string' || typeof e.required !== 'boolean' || typeof e.description !== 'string')
      out.push(`envVars[${i}] needs name, required and description`)
  }
  if (m.env) unknownKeys(m.env, ['required', 'optional'], 'env', out)

  const c = m.commands
  if (c) {
    unknownKeys(c, COMMANDS_KEYS, 'commands', out)
    if (!NAME_PATTERN.test(c.command ?? '')) out.push(`commands.command "${c.command}" must match ${NAME_PATTERN}`)
    if (CORE_VERBS.includes(c.command)) out.push(`commands.command "${c.command}" collides with the core command verb (E113/E405)`)
    if (!BINARY_PATTERN.test(c.binary ?? '')) out.push(`commands.binary "${c.binary}" must match ${BINARY_PATTERN}`)
    for (const [k, set] of [
      ['side_effect', ENUMS.side_effect],
      ['output', ENUMS.output],
      ['json', ENUMS.json],
      ['surface', ENUMS.surface],
    ] as const) {
      if (c[k] !== undefined && !set.includes(c[k])) out.push(`commands.${k} "${c[k]}" is not allowed`)
    }
    if (c.confirm && (c.confirm.flags ?? []).length > 0) out.push('commands.confirm: the root declares no flags, so only an empty list is valid')
    const seen = new Set<string>()
    for (const [i, s] of (c.subcommands ?? []).entries()) {
      const where = `commands.subcommands[${i}]`
      unknownKeys(s, SUB_KEYS, where, out)
      for (const seg of String(s.name ?? '').split(' ')) if (!NAME_PATTERN.test(seg)) out.push(`${where}.name segment "${seg}" must match ${NAME_PATTERN}`)
      if (seen.has(s.name)) out.push(`${where}.name "${s.name}" is declared twice`)
      seen.add(s.name)
      for (const [k, set] of [
        ['side_effect', ENUMS.side_effect],
        ['output', ENUMS.output],
        ['json', ENUMS.json],
        ['surface', ENUMS.surface],
      ] as const) {
        if (s[k] !== undefined && !set.includes(s[k])) out.push(`${where}.${k} "${s[k]}" is not allowed`)
      }
      for (const [j, f] of (s.flags ?? []).entries()) {
        unknownKeys(f, FLAG_KEYS, `${where}.flags[${j}]`, out)
        if (!NAME_PATTERN.test(f.name ?? '')) out.push(`${where}.flags[${j}].name "${f.name}" must match ${NAME_PATTERN}`)
        if (!f.type) out.push(`${where}.flags[${j}].type is required`)
      }
      for (const name of s.confirm?.flags ?? []) {
        if (!(s.flags ?? []).some((f: Json) => f.name === name && f.type === 'bool')) out.push(`${where}.confirm.flags: "${name}" must be a declared bool flag`)
      }
    }
  }

  // The compatibility keys must equal nself's projection of the v2 fields (E112).
  const p = projection(m)
  // Go decodes an absent key as its zero value, so absent, false and "" are the same.
  const norm = (v: unknown) => (v === undefined || v === false || v === '' ? undefined : v)
  for (const k of ['pluginType', 'binaryName', 'minNselfVersion', 'status', 'isCommercial', 'licenseType', 'requires_license', 'tier']) {
    if (norm(m[k]) !== norm(p[k])) out.push(`compatibility key ${k} is ${JSON.stringify(m[k])}, nself derives ${JSON.stringify(p[k])} (E112)`)
  }
  for (const cc of m.cliCommands ?? []) {
    if (c && cc.name === c.command && cc.description !== c.summary) out.push('cliCommands entry of the command must carry commands.summary (E112)')
  }
  return out
}

/** cli_binary.go / manifestv2.CLITargets: the binaries a CLI plugin publishes. */
export function cliTargets(m: Json): string[] {
  if (m.pluginType && m.pluginType !== 'cli') return []
  const names = (m.cliCommands ?? []).map((c: Json) => c.name).filter(Boolean)
  if (names.length > 0) return names.map((n: string) => `nself-${n}`)
  const bin = m.binaryName || (m.pluginType === 'cli' ? `nself-${m.name}` : '')
  return bin ? [bin] : []
}

export function sha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex')
}

/**
 * Install a plugin tarball the way `nself install <url> --checksum <sha256>` does, into `home`/.nself/plugins:
 * checksum before extraction; every entry checked as extractTarGz does (no absolute paths, no `..`, no symlinks
 * or hard links; setuid/setgid/sticky stripped); extraction into a staging folder inside the plugins folder;
 * plugin.json read and validated; the folder renamed to plugins/<name>; each command binary found (root, bin/,
 * then anywhere) and copied (not linked) to plugins/bin/<binary> with mode 0755. Returns the installed paths.
 */
export function installLikeNself(tarball: string, home: string, expectedChecksum: string): {pluginDir: string; binaries: string[]; manifest: Json} {
  const actual = sha256(tarball)
  if (actual !== expectedChecksum) throw new Error(`checksum verification: expected ${expectedChecksum}, got ${actual}`)
  const pluginsDir = path.join(home, '.nself', 'plugins')
  mkdirSync(pluginsDir, {recursive: true})

  const listing = execFileSync('tar', ['-tvzf', tarball], {encoding: 'utf8', maxBuffer: 64 * 1024 * 1024})
    .split('\n')
    .filter(Boolean)
  for (const line of listing) {
    const type = line[0]
    const name = line.split(/\s+/).slice(5).join(' ')
    if (type === 'l' || type === 'h') throw new Error(`unsafe tar entry: symlinks not allowed (${name})`)
    if (type !== '-' && type !== 'd') throw new Error(`unexpected tar entry type ${type} (${name})`)
    if (path.isAbsolute(name)) throw new Error(`unsafe tar entry: absolute path ${name}`)
    if (path.normalize(name).startsWith('..')) throw new Error(`unsafe tar entry: directory traversal ${name}`)
  }

  const staging = mkdtempSync(path.join(pluginsDir, '.staging-thirdparty-'))
  try {
    execFileSync('tar', ['-xzf', tarball, '-C', staging, '--no-same-owner', '--no-same-permissions'])
    const manifest = JSON.parse(readFileSync(path.join(staging, 'plugin.json'), 'utf8'))
    const problems = v2Problems(manifest)
    if (problems.length > 0) throw new Error(`third-party plugin: ${problems.join('; ')}`)
    const pluginDir = path.join(pluginsDir, manifest.name)
    rmSync(pluginDir, {force: true, recursive: true})
    renameSync(staging, pluginDir)

    const binDir = path.join(pluginsDir, 'bin')
    mkdirSync(binDir, {mode: 0o755, recursive: true})
    const binaries: string[] = []
    for (const bin of cliTargets(manifest)) {
      const src = findExtractedBinary(pluginDir, bin)
      if (!src) throw new Error(`plugin "${manifest.name}" provides the "${bin.replace(/^nself-/, '')}" command but its package contains no ${bin} binary`)
      const dst = path.join(binDir, bin)
      rmSync(dst, {force: true})
      copyFileSync(src, dst)
      chmodSync(dst, 0o755)
      binaries.push(dst)
    }
    return {binaries, manifest, pluginDir}
  } finally {
    rmSync(staging, {force: true, recursive: true})
  }
}

function findExtractedBinary(dir: string, bin: string): string | undefined {
  for (const c of [path.join(dir, bin), path.join(dir, 'bin', bin)]) {
    if (existsSync(c) && statSync(c).isFile()) return c
  }
  const walk = (d: string): string | undefined => {
    for (const e of readdirSync(d, {withFileTypes: true})) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) {
        const found = walk(p)
        if (found) return found
      } else if (e.name === bin) return p
    }
    return undefined
  }
  return walk(dir)
}
