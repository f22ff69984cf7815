import {execFileSync} from 'node:child_process'
import {mkdirSync, statfsSync} from 'node:fs'
import path from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {tmpDir} from '../helpers/cli.js'
import {PrivateCluster} from '../helpers/cluster.js'
import {CliRun, errorMessage, Hold, isOneTrueSentence, noDebris, toolWaitsOnLock, untouched, until, v030Digest, whatIsLeft} from '../helpers/faults.js'
import {cliArgs, runToEnd, uniqueDb} from './scenarios.js'

// Fault table rows "backup × full disk": a backup folder too small from the start (preflight refuses), and one
// that fills while pg_dump writes (tmpfs mounts; CI runs as root).
describe('a full backup disk', {timeout: 900_000}, () => {
  let cluster: PrivateCluster
  const dir = tmpDir('e2ee-flt-disk-')
  const small = path.join(dir.dir, 'small')
  const filling = path.join(dir.dir, 'filling')
  beforeAll(async () => {
    cluster = await PrivateCluster.start()
    mkdirSync(small)
    mkdirSync(filling)
    // CI runs as root and must be able to mount; a test that cannot make its fault must fail, not skip.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', small])
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=200m,mode=0700', 'tmpfs', filling])
  })
  afterAll(async () => {
    for (const m of [small, filling]) {
      try {
        execFileSync('umount', [m])
      } catch {}
    }
    dir.cleanup()
    await cluster?.destroy()
  })

  it('refuses before anything starts when the backup folder is too small for the database (preflight)', async () => {
    const db = uniqueDb()
    await cluster.createV030(db, {messages: 20_000})
    const r = await new CliRun(cliArgs('migrate', {backupDir: small, db}), cluster.env()).done
    const message = errorMessage(r.stderr)
    expect(r.code, r.stderr).toBe(1)
    expect(isOneTrueSentence(message), r.stderr).toBe(true)
    expect(message).toContain(small)
    expect(message).toMatch(/space|free/i)
    const left = await whatIsLeft(cluster, db, small)
    expect(untouched(left) && noDebris(left), JSON.stringify(left)).toBe(true)
  })

  it('a disk that fills while pg_dump writes: one sentence naming the file, production as it was, no partial file, a rerun with room finishes', async () => {
    const db = uniqueDb()
    await cluster.createV030(db, {messages: 20_000})
    const digest = await v030Digest(cluster, db)
    // pg_dump waits on a table the test locks; meanwhile the disk is filled; then pg_dump writes.
    await cluster.with(db, (sql) => sql`create table public.app_uploads (id bigint primary key)`)
    const run = new CliRun(cliArgs('migrate', {backupDir: filling, db}), cluster.env())
    await until('the preflight (which sizes every table) to complete', () => run.output.includes('[COMPLETED] Preflight'), {run})
    const hold = await Hold.lock(cluster, db, 'app_uploads', 'access exclusive', true)
    try {
      await until('pg_dump to wait for its lock', async () => run.output.includes('[STARTED] Backup') && toolWaitsOnLock(cluster), {run})
      const {bavail, bsize} = statfsSync(filling)
      execFileSync('fallocate', ['-l', String(bavail * bsize - 64 * 1024), path.join(filling, 'ballast')])
    } finally {
      await hold.release()
    }
    const r = await run.done
    const out = r.stdout + r.stderr
    const message = errorMessage(r.stderr)
    expect(r.code, out).toBe(1)
    expect(isOneTrueSentence(message), out).toBe(true)
    expect(message, out).toMatch(/backup/i)
    expect(message, out).toMatch(/full|no space|ENOSPC/i)
    expect(message, out).toContain(filling)
    const left = await whatIsLeft(cluster, db, filling)
    expect(untouched(left), JSON.stringify(left)).toBe(true)
    expect(noDebris(left), JSON.stringify(left)).toBe(true)
    expect(await v030Digest(cluster, db)).toEqual(digest)

    const again = await runToEnd(cluster, cliArgs('migrate', {backupDir: path.join(dir.dir, 'roomy'), db}))
    expect(again.code, again.out).toBe(0)
    expect((await whatIsLeft(cluster, db)).ledger).toEqual([13, 14, 15, 16])
    expect(await v030Digest(cluster, db)).toEqual(digest)
  })
})
