#!/usr/bin/env node
// Writes plugin.json, the manifest nself reads to install and run this package as a CLI plugin (schema v2:
// internal/plugin/manifestv2 in nself's source). Its commands block is derived from oclif.manifest.json, so
// `npm run manifest` keeps both in step; test/plugin/nself-manifest.test.ts checks the result against nself's rules.
// Usage: node scripts/plugin-manifest.mjs [--check]   (--check: exit 1 when plugin.json is out of date)
import {readFileSync, writeFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
const oclif = JSON.parse(readFileSync(path.join(root, 'oclif.manifest.json'), 'utf8'))

export const NAME = 'nchat-upgrade'
const SUMMARY = 'nChat v0.4.0 database upgrade (migrations 013-016): status, verify, dryrun, migrate, rollback'

// What each command does to the project, in nself's vocabulary (read, write, destructive; document, stream, interactive).
const ATTRS = {
  dryrun: {output: 'stream', side_effect: 'write'},
  migrate: {confirm: true, output: 'interactive', side_effect: 'destructive'},
  rollback: {confirm: true, output: 'interactive', side_effect: 'destructive'},
  status: {output: 'document', side_effect: 'read'},
  verify: {output: 'document', side_effect: 'read'},
}

const ENV = [
  ['PROJECT_NAME', 'nself project name; the postgres container is ${PROJECT_NAME}_postgres'],
  ['POSTGRES_HOST', 'database host (a docker network name such as postgres means the published port on 127.0.0.1)'],
  ['POSTGRES_PORT', 'published database port'],
  ['POSTGRES_DB', 'nChat database'],
  ['POSTGRES_USER', 'database user'],
  ['POSTGRES_PASSWORD', 'database password (never printed or passed in argv)'],
  ['ENV', 'which .env.<ENV> layer the plugin reads itself when run outside nself (dev, staging, prod)'],
  ['NSELF_LEGACY_ENV_ORDER', "nself's escape hatch for the older env file order"],
]

function flagType(flag) {
  if (flag.type === 'boolean') return 'bool'
  return typeof flag.default === 'number' ? 'int' : 'string'
}

function subcommand(id) {
  const cmd = oclif.commands[id]
  const name = id.split(':').at(-1)
  const attrs = ATTRS[name]
  if (!attrs) throw new Error(`no nself attributes for command ${id}`)
  const flags = Object.values(cmd.flags)
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((f) => ({
      name: f.name,
      ...(f.char ? {shorthand: f.char} : {}),
      type: flagType(f),
      ...(f.default !== undefined && f.default !== false ? {default: String(f.default)} : {}),
      usage: f.description,
    }))
  return {
    name,
    summary: cmd.description.split('\n')[0].split('. ')[0].replace(/\.$/, ''),
    side_effect: attrs.side_effect,
    output: attrs.output,
    json: 'legacy',
    flags,
    ...(attrs.confirm ? {confirm: {flags: ['yes']}} : {}),
  }
}

export function buildPluginManifest() {
  // nself's manifest has one level of subcommands: `maintain cleanup` etc. are reached through the same passthrough
  // (`nself nchat-upgrade maintain cleanup` runs `db e2ee maintain cleanup`) but are not listed.
  const subcommands = Object.keys(oclif.commands)
    .filter((id) => id.startsWith('db:e2ee:') && id.split(':').length === 3)
    .sort()
    .map(subcommand)
  return {
    manifest_version: 2,
    name: NAME,
    version: pkg.version,
    description: pkg.description.replace(/^nself plugin: /, ''),
    category: 'database',
    license: 'free',
    maturity: 'experimental',
    requires: {nself: '>=1.5.0'},
    service: {kind: 'cli'},
    commands: {
      command: NAME,
      binary: `nself-${NAME}`,
      summary: SUMMARY,
      side_effect: 'destructive',
      output: 'interactive',
      json: 'legacy',
      surface: 'cli-only',
      subcommands,
    },
    env: {optional: ENV.map(([n]) => n)},
    language: 'typescript',
    minNodeVersion: '20',
    tags: ['nchat', 'postgres', 'migration', 'e2ee'],
    envVars: ENV.map(([name, description]) => ({name, required: false, description})),
    // Reads and changes the project's database, runs pg_dump/pg_restore (docker exec), reads the password from the
    // env cascade, writes dumps to the project's backups/.
    permissions: ['db:read', 'db:write', 'system:exec', 'secrets:env:POSTGRES_PASSWORD', 'fs:write:backups'],
    // Compatibility keys for released 1.4.x readers: exactly nself's projection of the fields above.
    pluginType: 'cli',
    binaryName: `nself-${NAME}`,
    cliCommands: [{name: NAME, description: SUMMARY}],
    entryPoint: `bin/nself-${NAME}`,
    runtime: 'node',
    minNselfVersion: '1.5.0',
    status: 'experimental',
    licenseType: 'free',
    tier: 'free',
  }
}

const text = `${JSON.stringify(buildPluginManifest(), null, 2)}\n`
const file = path.join(root, 'plugin.json')
if (process.argv.includes('--check')) {
  let current = ''
  try {
    current = readFileSync(file, 'utf8')
  } catch {}
  if (current !== text) {
    process.stderr.write('plugin.json is out of date; run npm run manifest\n')
    process.exit(1)
  }
} else if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  writeFileSync(file, text)
  process.stdout.write(`wrote ${file}\n`)
}
