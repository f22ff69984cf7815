import {execFileSync} from 'node:child_process'
import {readFileSync, statSync} from 'node:fs'
import path from 'node:path'

import {describe, expect, it} from 'vitest'

import {NSELF_COMMAND, toOclifArgs} from '../../src/nself/plugin-entry.js'
import {LEGACY_ORDER_VAR, NSELF_SETTINGS} from '../../src/connection/env-files.js'
import {REPO_ROOT} from '../helpers/fixture.js'
import {cliTargets, v2Problems} from '../helpers/nself-plugin.js'

const plugin = JSON.parse(readFileSync(path.join(REPO_ROOT, 'plugin.json'), 'utf8'))
const oclif = JSON.parse(readFileSync(path.join(REPO_ROOT, 'oclif.manifest.json'), 'utf8'))
const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8'))

describe("plugin.json against nself's v2 manifest rules", () => {
  it('is accepted: keys, name pattern, enums, permissions allowlist, commands block, compatibility projection', () => {
    expect(v2Problems(plugin)).toEqual([])
    expect(plugin.version).toBe(pkg.version)
  })

  it('the checker refuses what nself refuses (so the first test can fail)', () => {
    const bad = (patch: Record<string, unknown>) => v2Problems({...plugin, ...patch})
    expect(bad({commands: {...plugin.commands, command: 'db'}}).join('\n')).toMatch(/collides with the core command verb/)
    expect(bad({name: 'NChat_Upgrade'}).join('\n')).toMatch(/must match/)
    expect(bad({checksum: 'x'}).join('\n')).toMatch(/forbidden key "checksum"/)
    expect(bad({extra: 1}).join('\n')).toMatch(/unknown key "extra"/)
    expect(bad({status: 'stable'}).join('\n')).toMatch(/compatibility key status/)
    expect(bad({permissions: ['db:admin']}).join('\n')).toMatch(/not on nself's allowlist/)
    expect(bad({commands: {...plugin.commands, binary: 'nchat-upgrade'}}).join('\n')).toMatch(/commands.binary/)
    const subs = plugin.commands.subcommands.map((s: {name: string}) => (s.name === 'migrate' ? {...s, confirm: {flags: ['force']}} : s))
    expect(bad({commands: {...plugin.commands, subcommands: subs}}).join('\n')).toMatch(/"force" must be a declared bool flag/)
  })

  it('a name the registry does not use, mounted as its own command, with the binary nself looks for', () => {
    expect(plugin.name).toBe('nchat-upgrade')
    // `e2ee` is the registry's E2EE key-directory plugin; these are nself's bundle names (`nself install nchat` installs a bundle).
    expect(['e2ee', 'nchat', 'nclaw', 'ntv', 'nfamily', 'clawde', 'nsentry']).not.toContain(plugin.name)
    // The unknown-command proxy reads plugins/<command>/plugin.json for the env it passes: name and command must agree.
    expect(plugin.commands.command).toBe(plugin.name)
    expect(NSELF_COMMAND).toBe(plugin.name)
    expect(cliTargets(plugin)).toEqual([plugin.commands.binary])
    expect(plugin.commands.binary).toBe(`nself-${plugin.name}`)
    const bin = path.join(REPO_ROOT, plugin.entryPoint)
    expect(statSync(bin).mode & 0o111).not.toBe(0)
  })

  it('declares every environment variable the settings code reads', () => {
    const declared = plugin.envVars.map((e: {name: string}) => e.name)
    for (const name of [...NSELF_SETTINGS, 'ENV', LEGACY_ORDER_VAR]) expect(declared).toContain(name)
    expect(plugin.env.optional).toEqual(declared)
  })

  it('declares exactly the db e2ee commands, with their flags, and maps `nself nchat-upgrade X` to `db e2ee X`', () => {
    const ids = Object.keys(oclif.commands)
      .filter((id) => id.startsWith('db:e2ee:') && id.split(':').length === 3)
      .map((id) => id.split(':')[2])
      .sort()
    expect(plugin.commands.subcommands.map((s: {name: string}) => s.name)).toEqual(ids)
    for (const s of plugin.commands.subcommands) {
      expect(s.flags.map((f: {name: string}) => f.name).sort()).toEqual(Object.keys(oclif.commands[`db:e2ee:${s.name}`].flags).sort())
    }
    expect(toOclifArgs(['migrate', '--yes'])).toEqual(['db', 'e2ee', 'migrate', '--yes'])
    expect(toOclifArgs(['maintain', 'cleanup', '--yes'])).toEqual(['db', 'e2ee', 'maintain', 'cleanup', '--yes'])
    expect(toOclifArgs([])).toEqual(['db', 'e2ee', '--help'])
    execFileSync(process.execPath, [path.join(REPO_ROOT, 'scripts', 'plugin-manifest.mjs'), '--check'])
  })
})
