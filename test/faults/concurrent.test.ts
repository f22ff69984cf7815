import {writeFileSync} from 'node:fs'
import path from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {tmpDir} from '../helpers/cli.js'
import {PrivateCluster} from '../helpers/cluster.js'
import {CliRun, errorMessage, Hold, isOneTrueSentence, type Leftovers, toolSessions, until, v030Digest, whatIsLeft} from '../helpers/faults.js'
import {cliArgs, runToEnd, uniqueDb} from './scenarios.js'

// Fault table rows "two commands at once": the first command is held at a step by a lock the test holds; the
// second starts then; the hold is released and both end. Whatever order they end in, the database is in one
// state the ledger tells truly (never 12, 14, 15, 16), no copy or session is left, every failure is one
// sentence, and a plain migrate afterwards finishes.

/** A database state the ledger tells truly: the ledger is a prefix of 13–16 and the objects match it. */
function coherent(l: Leftovers): boolean {
  const ok = [[], [13], [13, 14], [13, 14, 15], [13, 14, 15, 16]].some((v) => JSON.stringify(v) === JSON.stringify(l.ledger))
  const objectsMatch = (l.ledger?.length ?? 0) === 0 ? l.objects.length === 0 : l.objects.length > 0
  return ok && objectsMatch && l.invalidIndexes.length === 0 && l.notValidConstraints.length === 0 && l.allowConn === true
}

describe('two commands at once', {timeout: 900_000}, () => {
  let cluster: PrivateCluster
  const dir = tmpDir('e2ee-flt-conc-')
  beforeAll(async () => {
    cluster = await PrivateCluster.start()
  })
  afterAll(async () => {
    dir.cleanup()
    await cluster?.destroy()
  })

  interface Pair {
    name: string
    /** Where the database is before the pair starts: 'fresh' (12), 'at 14' (migrate --to 14), 'at 16'. */
    start: 'fresh' | 'at 14' | 'at 16'
    first: string[]
    second: string[]
    /** Hold taken before the first command starts, released once the second one waits or ends. */
    hold?: (c: {db: string}) => Promise<Hold>
    /** The first command is at its held step. */
    held: (run: CliRun, c: {db: string; resumeFile: string}) => Promise<void>
    /** A test pause (src/test-pause.ts) for the first command. */
    pause?: string
  }

  const applyWaits = async (run: CliRun) =>
    until(
      'the first command to wait at its apply step',
      () => /\[STARTED\] (Apply to production|Run the down migrations)[\s\S]*(waiting|lock wait)/i.test(run.output),
      {run},
    )
  const PAIRS: Pair[] = [
    {
      first: ['migrate'],
      hold: (c) => Hold.lock(cluster, c.db, 'nchat_users', 'access share', true),
      held: applyWaits,
      name: 'migrate (waiting on a lock at 015) + rollback --strategy restore',
      second: ['rollback'],
      start: 'at 14',
    },
    {
      first: ['migrate'],
      hold: (c) => Hold.lock(cluster, c.db, 'nchat_users', 'access share', true),
      held: applyWaits,
      name: 'migrate (waiting on a lock) + dryrun',
      second: ['dryrun'],
      start: 'fresh',
    },
    {
      first: ['rollback'],
      // Held inside the swap's transaction (both renames done, not committed) by the test pause.
      held: async (run, c) => {
        await until('the first rollback to pause inside its swap', () => run.stderr.includes('[test-pause] swap:renamed'), {run})
        holds.push({
          release: async () => {
            writeFileSync(c.resumeFile, '')
          },
        })
      },
      name: 'rollback (held inside its swap) + rollback',
      pause: 'swap:renamed',
      second: ['rollback'],
      start: 'at 16',
    },
    {
      first: ['rollback', '--strategy', 'down'],
      hold: (c) => Hold.lock(cluster, c.db, 'nchat_users', 'access share', true),
      held: applyWaits,
      name: 'rollback --strategy down (waiting on a lock) + migrate',
      second: ['migrate'],
      start: 'at 16',
    },
  ]
  const holds: Array<Pick<Hold, 'release'>> = []

  it.each(PAIRS.map((p) => ({name: p.name, p})))('$name', async ({p}) => {
    const db = uniqueDb()
    const backupDir = path.join(dir.dir, db)
    const c = {backupDir, db, resumeFile: path.join(dir.dir, `${db}.resume`)}
    await cluster.createV030(db)
    try {
      const digest = await v030Digest(cluster, db)
      if (p.start !== 'fresh') {
        const m = await runToEnd(cluster, cliArgs('migrate', c, p.start === 'at 14' ? ['--to', '14'] : []))
        expect(m.code, m.out).toBe(0)
      }
      if (p.hold) holds.push(await p.hold(c))
      const pause = p.pause ? {NSELF_E2EE_TEST_PAUSE: p.pause, NSELF_E2EE_TEST_RESUME: c.resumeFile} : {}
      const first = new CliRun(cliArgs(p.first[0], c, p.first.slice(1)), {...cluster.env(), ...pause})
      let second: CliRun | undefined
      try {
        await p.held(first, c)
        const before = new Set((await toolSessions(cluster)).map((s) => s.pid))
        second = new CliRun(cliArgs(p.second[0], c, p.second.slice(1)), cluster.env())
        const s = second
        // The second one either ends, says it waits, or waits on a lock of its own.
        await until(
          'the second command to end or wait',
          async () => s.exited || /wait/i.test(s.output) || (await toolSessions(cluster)).some((x) => !before.has(x.pid) && x.wait === 'Lock'),
        )
      } finally {
        for (const h of holds.splice(0)) await h.release()
      }
      const results = await Promise.all([first.done, second!.done])
      const report = results
        .map((r, i) => `--- ${i === 0 ? p.first.join(' ') : p.second.join(' ')} (exit ${r.code}) ---\n${(r.stdout + r.stderr).slice(-2500)}`)
        .join('\n')
      for (const r of results) {
        expect([0, 1], report).toContain(r.code)
        if (r.code !== 0) expect(isOneTrueSentence(errorMessage(r.stderr)), report).toBe(true)
      }
      const left = await whatIsLeft(cluster, db, backupDir)
      expect(coherent(left), `${report}\n${JSON.stringify(left)}`).toBe(true)
      expect(
        left.databases.filter((d) => !/_pre_rollback_/.test(d)),
        report,
      ).toEqual([])
      expect(left.databases.filter((d) => /_pre_rollback_/.test(d)).length, report).toBeLessThanOrEqual(1)
      expect(left.sessions).toBe(0)
      expect(left.partialFiles).toEqual([])
      expect(await v030Digest(cluster, db)).toEqual(digest)

      const again = await runToEnd(cluster, cliArgs('migrate', c))
      expect(again.code, again.out).toBe(0)
      expect((await whatIsLeft(cluster, db)).ledger).toEqual([13, 14, 15, 16])
    } finally {
      for (const d of (await whatIsLeft(cluster, db).catch(() => ({databases: [] as string[]}))).databases) await cluster.dropDatabase(d).catch(() => {})
      await cluster.dropDatabase(db).catch(() => {})
    }
  })
})
