import {readdirSync, readFileSync} from 'node:fs'
import path from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {tmpDir} from '../helpers/cli.js'
import {PrivateCluster} from '../helpers/cluster.js'
import {CliRun, errorMessage, isOneTrueSentence, untouched, until, whatIsLeft} from '../helpers/faults.js'
import {cliArgs, uniqueDb} from './scenarios.js'

// Fault table row "password-protected role": the application's role logs in with scram-sha-256 (pg_hba asks
// it for a password; everyone else is trusted). The password must reach no argv, log line, JSON or error.
const ROLE = 'nchat_app'
const SECRET = `Pw-${Math.random().toString(36).slice(2)}-s3cret`

/** Every process's argv on this machine, read until the run ends; returns those that held the secret. */
function watchArgv(run: CliRun): Promise<string[]> {
  const seen: string[] = []
  return (async () => {
    while (!run.exited) {
      for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        try {
          const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
          if (argv.includes(SECRET)) seen.push(argv.replaceAll('\0', ' '))
        } catch {
          // the process ended
        }
      }
      await new Promise((r) => setTimeout(r, 20))
    }
    return seen
  })()
}

function filesUnder(dir: string): string[] {
  try {
    return readdirSync(dir, {recursive: true, withFileTypes: true})
      .filter((e) => e.isFile())
      .map((e) => path.join(e.parentPath, e.name))
  } catch {
    return []
  }
}

describe('a password-protected role', {timeout: 900_000}, () => {
  let cluster: PrivateCluster
  const dir = tmpDir('e2ee-flt-pw-')
  beforeAll(async () => {
    cluster = await PrivateCluster.start({hba: [`host all ${ROLE} 127.0.0.1/32 scram-sha-256`]})
    await cluster.with('postgres', (sql) => sql.unsafe(`create role ${ROLE} login createdb password '${SECRET}'`))
  })
  afterAll(async () => {
    dir.cleanup()
    await cluster?.destroy()
  })

  const env = (password: string) => ({...cluster.env(), PGPASSWORD: password, PGUSER: ROLE})

  it('migrate and rollback: the password is in no argv, output, JSON, backup file or manifest', async () => {
    const db = uniqueDb()
    await cluster.createV030(db, {owner: ROLE})
    const backupDir = path.join(dir.dir, db)
    for (const command of ['migrate', 'rollback']) {
      const run = new CliRun([...cliArgs(command, {backupDir, db}), '--json'], env(SECRET))
      const argv = watchArgv(run)
      const r = await run.done
      expect(r.code, r.stdout + r.stderr).toBe(0)
      expect(await argv).toEqual([])
      expect(r.stdout + r.stderr).not.toContain(SECRET)
      expect(() => JSON.parse(r.stdout)).not.toThrow()
    }
    for (const f of filesUnder(backupDir)) expect(readFileSync(f).includes(SECRET), f).toBe(false)
    expect((await whatIsLeft(cluster, db)).ledger).toEqual([])
  })

  it('Ctrl+C during the backup: the message names the step, not the password', async () => {
    const db = uniqueDb()
    await cluster.createV030(db, {messages: 20_000, owner: ROLE})
    const run = new CliRun(cliArgs('migrate', {backupDir: path.join(dir.dir, db), db}), env(SECRET))
    const argv = watchArgv(run)
    await until('the backup to write', () => / written/.test(run.output), {run})
    run.signal('SIGINT')
    const r = await run.done
    expect(r.code, r.stderr).toBe(130)
    expect(isOneTrueSentence(errorMessage(r.stderr)), r.stderr).toBe(true)
    expect(r.stdout + r.stderr).not.toContain(SECRET)
    expect(await argv).toEqual([])
    expect(untouched(await whatIsLeft(cluster, db))).toBe(true)
  })

  it('a wrong password is refused in one sentence that does not repeat it', async () => {
    const db = uniqueDb()
    await cluster.createV030(db, {owner: ROLE})
    const wrong = `${SECRET}-wrong`
    const r = await new CliRun([...cliArgs('migrate', {backupDir: path.join(dir.dir, db), db}), '--json'], env(wrong)).done
    expect(r.code).toBe(1)
    const message = errorMessage(r.stderr)
    expect(isOneTrueSentence(message), r.stderr).toBe(true)
    expect(message).toMatch(/password|login|authentication/i)
    expect(r.stdout + r.stderr).not.toContain(wrong)
    expect(untouched(await whatIsLeft(cluster, db))).toBe(true)
  })
})
