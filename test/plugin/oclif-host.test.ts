import {execFile} from 'node:child_process'
import {mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {REPO_ROOT} from '../helpers/fixture.js'

const execFileP = promisify(execFile)

/**
 * An oclif host CLI named `nself` with its own @oclif/plugin-help that loads this package as a plugin (what
 * `plugins link` does): our commands appear as `nself db e2ee …`, the host's help command stays the host's, and
 * nothing warns about a plugin overriding it (this package lists plugin-help only as a devPlugin).
 */
let host: string
beforeAll(() => {
  host = mkdtempSync(path.join(os.tmpdir(), 'e2ee-host-'))
  mkdirSync(path.join(host, 'node_modules', '@oclif'), {recursive: true})
  mkdirSync(path.join(host, 'node_modules', '@nself'), {recursive: true})
  symlinkSync(path.join(REPO_ROOT, 'node_modules', '@oclif', 'core'), path.join(host, 'node_modules', '@oclif', 'core'))
  symlinkSync(path.join(REPO_ROOT, 'node_modules', '@oclif', 'plugin-help'), path.join(host, 'node_modules', '@oclif', 'plugin-help'))
  symlinkSync(REPO_ROOT, path.join(host, 'node_modules', '@nself', 'plugin-e2ee'))
  writeFileSync(
    path.join(host, 'package.json'),
    JSON.stringify({
      dependencies: {'@nself/plugin-e2ee': '*', '@oclif/core': '*', '@oclif/plugin-help': '*'},
      name: 'nself-host',
      oclif: {bin: 'nself', commands: './commands', plugins: ['@oclif/plugin-help', '@nself/plugin-e2ee'], topicSeparator: ' '},
      type: 'module',
      version: '9.9.9',
    }),
  )
  mkdirSync(path.join(host, 'commands'))
  writeFileSync(path.join(host, 'run.js'), "import {execute} from '@oclif/core'\nawait execute({dir: import.meta.url})\n")
})
afterAll(() => rmSync(host, {force: true, recursive: true}))

const run = (args: string[]) => execFileP(process.execPath, [path.join(host, 'run.js'), ...args], {env: {...process.env, NO_COLOR: '1'}})

describe('in an oclif host', () => {
  it('`nself db e2ee …` is there, the host keeps its own help, and nothing warns', async () => {
    const help = await run(['help', 'db', 'e2ee'])
    expect(help.stdout).toMatch(/\$ nself db e2ee COMMAND/)
    expect(help.stdout).toMatch(/db e2ee migrate\s+Upgrade nChat/)
    expect(help.stderr).toBe('')
    const cmd = await run(['db', 'e2ee', 'status', '--help'])
    expect(cmd.stdout).toMatch(/--nself-env-file/)
    expect(cmd.stdout).not.toMatch(/--env-file/)
    expect(cmd.stderr).toBe('')
    const {stdout} = await run(['help'])
    expect(stdout).toMatch(/VERSION\s+nself-host\/9\.9\.9/)
    expect(stdout).toMatch(/help\s+Display help for nself/)
  })
})
