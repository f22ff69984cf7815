import {readdirSync, readFileSync} from 'node:fs'
import path from 'node:path'
import {describe, expect, it} from 'vitest'

import {REPO_ROOT} from './helpers/fixture.js'

const manifest = JSON.parse(readFileSync(path.join(REPO_ROOT, 'oclif.manifest.json'), 'utf8'))
const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8'))
const commandsDir = path.join(REPO_ROOT, 'src', 'commands')

function commandFiles(dir: string, prefix: string[] = []): string[][] {
  return readdirSync(dir, {withFileTypes: true}).flatMap((e) =>
    e.isDirectory() ? commandFiles(path.join(dir, e.name), [...prefix, e.name]) : e.name.endsWith('.ts') ? [[...prefix, e.name.replace(/\.ts$/, '')]] : [],
  )
}

describe('oclif.manifest.json is in step with the commands (regenerate with `npm run manifest`)', () => {
  const files = commandFiles(commandsDir)

  it('lists exactly the commands in src/commands, for this package version', () => {
    expect(Object.keys(manifest.commands).sort()).toEqual(files.map((f) => f.join(':')).sort())
    expect(manifest.version).toBe(pkg.version)
  })

  for (const parts of files) {
    const id = parts.join(':')
    it(`${id}: same description and flags`, async () => {
      const mod = await import(`${path.join(commandsDir, ...parts)}.ts`)
      const cmd = mod.default
      const m = manifest.commands[id]
      expect(m, `${id} missing from the manifest`).toBeDefined()
      expect(m.description).toBe(cmd.description)
      const flags = {...cmd.baseFlags, ...cmd.flags}
      expect(Object.keys(m.flags).sort()).toEqual(Object.keys(flags).sort())
      for (const [name, flag] of Object.entries<{description?: string; default?: unknown; options?: string[]; char?: string; type?: string}>(flags)) {
        expect(m.flags[name].description, `${id} --${name}`).toBe(flag.description)
        expect(m.flags[name].char, `${id} --${name}`).toBe(flag.char)
        // The manifest leaves out a boolean's default false.
        if (typeof flag.default !== 'function')
          expect(m.flags[name].default ?? (flag.type === 'boolean' ? false : undefined), `${id} --${name}`).toEqual(flag.default)
        if (flag.options) expect(m.flags[name].options).toEqual(flag.options)
      }
    })
  }
})
