import {execFile, spawn} from 'node:child_process'
import {mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {createV030Database, REPO_ROOT, type V030Database} from '../helpers/fixture.js'
import {FAKE_DOCKER_DIR, ledgerVersion, parseJson} from '../helpers/cli.js'
import {installLikeNself, sha256} from '../helpers/nself-plugin.js'

const execFileP = promisify(execFile)

/**
 * From the release tarball alone, installed as nself's installer lays it out (there is no nself binary on this
 * machine: the installer's steps are restated in test/helpers/nself-plugin.ts), run the executable from
 * ~/.nself/plugins/bin/ with nself's environment and take a v0.3.0 database to 016.
 */
let work: string
let tarball: string
let checksum: string
const dbs: V030Database[] = []

beforeAll(async () => {
  work = mkdtempSync(path.join(os.tmpdir(), 'e2ee-release-'))
  const out = path.join(work, 'release')
  await execFileP(process.execPath, [path.join(REPO_ROOT, 'scripts', 'release.mjs'), out], {maxBuffer: 16 * 1024 * 1024})
  tarball = path.join(out, readdirSync(out).find((f) => f.endsWith('.tar.gz'))!)
  checksum = readFileSync(path.join(out, 'SHA256SUMS'), 'utf8').split(/\s+/)[0]
}, 300_000)

afterAll(async () => {
  while (dbs.length) await dbs.pop()!.drop()
  rmSync(work, {force: true, recursive: true})
})

/** Run the installed executable as nself does: argv after the command, inherited env (here: only what nself gives). */
function runPlugin(bin: string, args: string[], env: Record<string, string>, cwd: string): Promise<{code: number | null; stdout: string; stderr: string}> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, {cwd, env, stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => {
      stdout += d
    })
    child.stderr.on('data', (d) => {
      stderr += d
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({code, stderr, stdout}))
  })
}

/** nself's environment for a plugin: the user's PATH (node, and docker: here the stand-in) and HOME, nothing of this repo. */
function baseEnv(home: string): Record<string, string> {
  return {HOME: home, PATH: [FAKE_DOCKER_DIR, path.dirname(process.execPath), '/usr/bin', '/bin'].join(path.delimiter)}
}

describe('the release tarball installed the way nself installs it', () => {
  it('holds the plugin folder only: production dependencies, no dev tools, no symlinks; a wrong checksum is refused', () => {
    const listing = readFileSync(tarball).length
    expect(listing).toBeGreaterThan(0)
    const home = mkdtempSync(path.join(work, 'home-'))
    expect(() => installLikeNself(tarball, home, '0'.repeat(64))).toThrow(/checksum verification/)
    expect(readdirSync(path.join(home))).toEqual([])
    const {pluginDir, binaries} = installLikeNself(tarball, home, checksum)
    expect(pluginDir).toBe(path.join(home, '.nself', 'plugins', 'nchat-upgrade'))
    expect(binaries).toEqual([path.join(home, '.nself', 'plugins', 'bin', 'nself-nchat-upgrade')])
    expect(statSync(binaries[0]).mode & 0o777).toBe(0o755)
    const modules = readdirSync(path.join(pluginDir, 'node_modules'))
    for (const dep of ['@oclif', 'postgres', 'execa', 'listr2', 'dotenv']) expect(modules).toContain(dep)
    for (const dev of ['vitest', 'typescript', 'oclif', '.bin']) expect(modules).not.toContain(dev)
    expect(readdirSync(path.join(pluginDir, 'node_modules', '@oclif'))).toEqual(['core'])
    expect(readdirSync(pluginDir).sort()).toEqual([
      'README.md',
      'bin',
      'dist',
      'messages',
      'migrations',
      'node_modules',
      'oclif.manifest.json',
      'package.json',
      'plugin.json',
    ])
    expect(sha256(tarball)).toBe(checksum)
  })

  it('with only POSTGRES_* and PROJECT_NAME set and no project files, migrate takes a v0.3.0 database to 016 (tools through docker exec)', async () => {
    const db = await createV030Database({messages: 300})
    dbs.push(db)
    const home = mkdtempSync(path.join(work, 'home-'))
    const {
      binaries: [bin],
    } = installLikeNself(tarball, home, checksum)
    const cwd = mkdtempSync(path.join(work, 'empty-'))
    const env = {
      ...baseEnv(home),
      FAKE_DOCKER_CONTAINER: 'nchat_postgres',
      FAKE_DOCKER_LOG: path.join(work, 'docker.log'),
      POSTGRES_DB: db.name,
      POSTGRES_HOST: 'postgres',
      POSTGRES_PASSWORD: '',
      POSTGRES_PORT: '5432',
      POSTGRES_USER: 'postgres',
      PROJECT_NAME: 'nchat',
    }
    const before = await runPlugin(bin, ['status', '--json'], env, cwd)
    expect(before.code, before.stderr).toBe(0)
    const s = parseJson(before.stdout)
    expect(s.pending).toEqual([13, 14, 15, 16])
    expect(s.connection.sources).toMatchObject({
      database: 'environment (POSTGRES_DB)',
      port: 'environment (POSTGRES_PORT)',
      user: 'environment (POSTGRES_USER)',
    })
    expect(s.settings.envFiles).toEqual([])

    const r = await runPlugin(bin, ['migrate', '--yes', '--skip-dryrun'], env, cwd)
    expect(r.code, r.stderr).toBe(0)
    expect(await ledgerVersion(db.name)).toBe(16)
    // The pre-migration dump went through docker exec into ./backups, nothing else there.
    expect(readdirSync(path.join(cwd, 'backups')).filter((f) => !f.startsWith('.'))).toEqual([expect.stringMatching(/^nchat_\d{8}_\d{6}\.dump$/)])
    expect(readFileSync(path.join(work, 'docker.log'), 'utf8')).toMatch(/"exec","-i",(?:"-e","[A-Z]+",)*"nchat_postgres","pg_dump"/)

    const verify = await runPlugin(bin, ['verify', '--json'], env, cwd)
    expect(verify.code, verify.stderr).toBe(0)
    expect(parseJson(verify.stdout).ok).toBe(true)

    const bad = await runPlugin(bin, ['migrate', '--no-such-flag'], env, cwd)
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/^Error: .*no-such-flag/m)
  })

  it('with project files (backend/.env, ENV=prod, the password in .env.secrets) and no POSTGRES_* in the environment', async () => {
    const db = await createV030Database({messages: 50})
    dbs.push(db)
    const home = mkdtempSync(path.join(work, 'home-'))
    const {
      binaries: [bin],
    } = installLikeNself(tarball, home, checksum)
    const project = mkdtempSync(path.join(work, 'project-'))
    mkdirSync(path.join(project, 'backend'))
    writeFileSync(
      path.join(project, 'backend', '.env'),
      `ENV=prod\nPROJECT_NAME=nchat\nPOSTGRES_DB=wrong_db\nPOSTGRES_HOST=postgres\nPOSTGRES_PORT=5432\nPOSTGRES_USER=postgres\n`,
    )
    writeFileSync(path.join(project, 'backend', '.env.dev'), `POSTGRES_DB=dev_db\n`)
    writeFileSync(path.join(project, 'backend', '.env.prod'), `POSTGRES_DB=${db.name}\n`)
    writeFileSync(path.join(project, 'backend', '.env.secrets'), `POSTGRES_PASSWORD="pa\\"ss#word"\n`)
    const r = await runPlugin(bin, ['status', '--json', '--local'], {...baseEnv(home)}, project)
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s.connection.database).toBe(db.name)
    expect(s.connection.sources).toMatchObject({database: '.env.prod', password: '.env.secrets', port: '.env'})
    expect(s.settings.projectDir).toBe(path.join(project, 'backend'))
    expect(s.settings.env).toBe('prod (from .env)')
    expect(r.stdout).not.toContain('ss#word')
  })
})
