import {execFileSync} from 'node:child_process'
import {mkdirSync} from 'node:fs'
import path from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {tmpDir} from '../helpers/cli.js'
import {PrivateCluster} from '../helpers/cluster.js'
import {CliRun, errorMessage, isOneTrueSentence, noDebris, untouched, v030Digest, whatIsLeft} from '../helpers/faults.js'
import {cliArgs, runToEnd, uniqueDb} from './scenarios.js'

// Fault table row "backup × full disk": the backup folder is a 256 kB tmpfs, the dump is over 1 MB.
describe('a full backup disk', () => {
  let cluster: PrivateCluster
  const dir = tmpDir('e2ee-flt-disk-')
  const small = path.join(dir.dir, 'small')
  beforeAll(async () => {
    cluster = await PrivateCluster.start()
    mkdirSync(small)
    // CI runs as root and must be able to mount; a test that cannot make its fault must fail, not skip.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', small])
  })
  afterAll(async () => {
    try { execFileSync('umount', [small]) } catch {}
    dir.cleanup()
    await cluster?.destroy()
  })

  it('stops at the backup in one sentence naming the file, leaves production and no partial file, and a rerun with room finishes', async () => {
    const db = uniqueDb()
    await cluster.createV030(db, {messages: 20_000})
    const digest = await v030Digest(cluster, db)
    const r = await new CliRun(cliArgs('migrate', {backupDir: small, db}), cluster.env()).done
    const out = r.stdout + r.stderr
    const message = errorMessage(r.stderr)
    expect(r.code, out).toBe(1)
    expect(isOneTrueSentence(message), out).toBe(true)
    expect(message, out).toMatch(/backup/i)
    expect(message, out).toMatch(/full|no space|ENOSPC/i)
    expect(message, out).toContain(small)
    const left = await whatIsLeft(cluster, db, small)
    expect(untouched(left), JSON.stringify(left)).toBe(true)
    expect(noDebris(left), JSON.stringify(left)).toBe(true)
    expect(await v030Digest(cluster, db)).toEqual(digest)

    const again = await runToEnd(cluster, cliArgs('migrate', {backupDir: path.join(dir.dir, 'roomy'), db}))
    expect(again.code, again.out).toBe(0)
    expect((await whatIsLeft(cluster, db)).ledger).toEqual([13, 14, 15, 16])
    expect(await v030Digest(cluster, db)).toEqual(digest)
  })
})
