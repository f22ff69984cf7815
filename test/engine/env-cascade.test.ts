import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {afterEach, describe, expect, it} from 'vitest'

import {cascadeOrder, detectBackendDir, parseEnvText, readNselfEnv} from '../../src/connection/env-files.js'
import {resolveTarget} from '../../src/connection/target.js'

const dirs: string[] = []
afterEach(() => {
  while (dirs.length) rmSync(dirs.pop()!, {force: true, recursive: true})
})

function project(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'e2ee-env-'))
  dirs.push(dir)
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), {recursive: true})
    writeFileSync(path.join(dir, name), text)
  }
  return dir
}

const none = () => undefined

describe('env file values as nself (godotenv 1.5) reads them', () => {
  it('a double-quoted value keeps # and unescapes \\" (the old reader gave pa\\)', () => {
    expect(parseEnvText('POSTGRES_PASSWORD="pa\\"ss#word"\n', none)).toEqual({POSTGRES_PASSWORD: 'pa"ss#word'})
  })

  it('$$ stays as written (the old reader gave pa$); $UPPER expands, unknown names become empty, \\$ is a literal $', () => {
    expect(parseEnvText('A=pa$$word\nB=x$A\nC="${A}-$NOPE-y"\nD=a\\$b\nE=lower$case\n', none)).toEqual({
      A: 'pa$$word',
      B: 'xpa$$word',
      C: 'pa$$word--y',
      D: 'a$b',
      E: 'lower$case',
    })
    expect(parseEnvText('A=${FROM_ENV}\n', (n) => (n === 'FROM_ENV' ? 'env' : undefined))).toEqual({A: 'env'})
  })

  it('# starts a comment only after whitespace in an unquoted value; single quotes keep everything', () => {
    expect(parseEnvText("A=pa#ss\nB=pa #comment\nC='p#ss $A \\n'  # c\n# D=no\n", none)).toEqual({A: 'pa#ss', B: 'pa', C: 'p#ss $A \\n'})
  })

  it('export and yaml-style keys; \\n in double quotes is a newline; backticks are not quotes; no ${VAR:-default} (the name ends at the colon)', () => {
    expect(parseEnvText('export A=1\nB: 2\nC="l1\\nl2"\nD=`x`\nE=${A:-z}\n', none)).toEqual({A: '1', B: '2', C: 'l1\nl2', D: '`x`', E: '1:-z}'})
  })

  it('CRLF files and multi-line double-quoted values', () => {
    expect(parseEnvText('A="one\r\ntwo"\r\nB=3\r\n', none)).toEqual({A: 'one\ntwo', B: '3'})
  })
})

describe('the cascade, ENV and the project folder as nself resolves them', () => {
  it('orders .env → .env.<ENV> → .env.secrets → .env.local, and the legacy order with NSELF_LEGACY_ENV_ORDER', () => {
    expect(cascadeOrder('prod', false)).toEqual(['.env', '.env.prod', '.env.secrets', '.env.local'])
    expect(cascadeOrder('dev', false)).toEqual(['.env', '.env.dev', '.env.secrets', '.env.local'])
    expect(cascadeOrder('qa', false)).toEqual(['.env', '.env.qa', '.env.secrets', '.env.local'])
    expect(cascadeOrder('../x', false)).toEqual(['.env', '.env.secrets', '.env.local'])
    expect(cascadeOrder('prod', true)).toEqual(['.env.dev', '.env.prod', '.env.secrets', '.env.local', '.env', '.env.ai'])
  })

  it('on a production box (ENV=prod in .env, the password in .env.secrets) it reads prod values, not dev ones', () => {
    const dir = project({
      '.env': 'ENV=prod\nPROJECT_NAME=nchat\nPOSTGRES_DB=base\nPOSTGRES_PORT=5432\n',
      '.env.dev': 'POSTGRES_DB=devdb\nPOSTGRES_PASSWORD=devpw\n',
      '.env.local': 'POSTGRES_PORT=6543\n',
      '.env.prod': 'POSTGRES_DB=proddb\n',
      '.env.secrets': 'POSTGRES_PASSWORD="pa\\"ss#word"\n',
    })
    const layer = readNselfEnv(dir, {}, {})
    expect(layer.envName).toBe('prod')
    expect(layer.envSource).toBe('.env')
    expect(layer.values).toMatchObject({POSTGRES_DB: 'proddb', POSTGRES_PASSWORD: 'pa"ss#word', POSTGRES_PORT: '6543'})
    expect(layer.sources).toMatchObject({POSTGRES_DB: '.env.prod', POSTGRES_PASSWORD: '.env.secrets', POSTGRES_PORT: '.env.local', PROJECT_NAME: '.env'})
    expect(layer.files.map((f) => path.basename(f))).toEqual(['.env', '.env.prod', '.env.secrets', '.env.local'])

    // ENV in the process environment wins over .env's ENV=; the legacy order lets bare .env win last.
    expect(readNselfEnv(dir, {}, {ENV: 'dev'}).values.POSTGRES_DB).toBe('devdb')
    const legacy = readNselfEnv(dir, {}, {NSELF_LEGACY_ENV_ORDER: 'true'})
    expect(legacy.legacyOrder).toBe(true)
    expect(legacy.values.POSTGRES_DB).toBe('base')
    expect(readNselfEnv(dir, {}, {NSELF_LEGACY_ENV_ORDER: 'yes'}).legacyOrder).toBe(false)
  })

  it('variables in the process environment win over every file; --nself-env-file wins over both', () => {
    const dir = project({'.env': 'POSTGRES_DB=file\nPOSTGRES_USER=fileuser\n', 'extra.env': 'POSTGRES_USER=extra\n'})
    const layer = readNselfEnv(dir, {}, {POSTGRES_DB: 'fromenv'})
    expect(layer.values.POSTGRES_DB).toBe('fromenv')
    expect(layer.sources.POSTGRES_DB).toBe('environment (POSTGRES_DB)')
    const withExtra = readNselfEnv(dir, {extraFile: path.join(dir, 'extra.env')}, {POSTGRES_USER: 'envuser'})
    expect(withExtra.values.POSTGRES_USER).toBe('extra')
    expect(withExtra.sources.POSTGRES_USER).toBe('extra.env')
    expect(() => readNselfEnv(dir, {extraFile: path.join(dir, 'missing.env')}, {})).toThrow(/given by --nself-env-file does not exist/)
  })

  it('no project files at all: only POSTGRES_* and PROJECT_NAME from the environment', () => {
    const dir = project({})
    const t = resolveTarget(
      {projectDir: dir},
      {POSTGRES_DB: 'd1', POSTGRES_HOST: 'postgres', POSTGRES_PASSWORD: 'pw', POSTGRES_PORT: '5439', POSTGRES_USER: 'u1', PROJECT_NAME: 'nchat'},
    )
    expect(t.conn).toEqual({database: 'd1', host: '127.0.0.1', password: 'pw', port: 5439, user: 'u1'})
    expect(t.sources.database).toBe('environment (POSTGRES_DB)')
    expect(t.sources.host).toMatch(/environment \(POSTGRES_HOST\) \(POSTGRES_HOST=postgres is a docker network name/)
    expect(t.containerCandidates[0]).toBe('nchat_postgres')
    expect(t.envFiles).toEqual([])
  })

  it("switches to backend/ when it holds a .env (nself's DetectMonorepoRoot), also .backend/", () => {
    const dir = project({'.env': 'POSTGRES_DB=root\n', 'backend/.env': 'POSTGRES_DB=backend\nPROJECT_NAME=nchat\n'})
    expect(detectBackendDir(dir)).toBe(path.join(dir, 'backend'))
    const t = resolveTarget({projectDir: dir}, {})
    expect(t.projectDir).toBe(path.join(dir, 'backend'))
    expect(t.conn.database).toBe('backend')
    expect(t.backupDir).toBe(path.join(dir, 'backend', 'backups'))
    expect(t.cascade?.monorepoFrom).toBe(dir)
    const hidden = project({'.backend/.env': 'POSTGRES_DB=hidden\n'})
    expect(resolveTarget({projectDir: hidden}, {}).conn.database).toBe('hidden')
    expect(detectBackendDir(project({'backend/x': ''}))).toBeUndefined()
  })

  it('a malformed or NUL-bearing env file is refused by name', () => {
    const dir = project({'.env': 'A=1\0\n'})
    expect(() => readNselfEnv(dir, {}, {})).toThrow(new RegExp(`The env file ${path.join(dir, '.env').replace(/[.]/g, '\\.')} contains a NUL byte`))
  })
})
