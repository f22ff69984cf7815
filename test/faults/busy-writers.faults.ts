import path from 'node:path'

import postgres from 'postgres'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {tmpDir} from '../helpers/cli.js'
import {PrivateCluster} from '../helpers/cluster.js'
import {CliRun, errorMessage, isOneTrueSentence, noDebris, until, whatIsLeft} from '../helpers/faults.js'
import {cliArgs, runToEnd, uniqueDb} from './scenarios.js'

// Fault table row "apply × busy writers" (issue 9, defect 1): six connections insert messages as fast as they
// can during migrate. Every acknowledged insert must be there afterwards, no insert may fail (deadlock victim,
// lock timeout), none may wait for a lock longer than the migration's lock timeout plus a margin (the writers'
// own lock_timeout measures lock waits only, so a loaded machine does not count), and the migration finishes.
const WRITERS = 6
const LOCK_TIMEOUT = 200
const MARGIN = 800

describe('busy writers during migrate', () => {
  let cluster: PrivateCluster
  const dir = tmpDir('e2ee-flt-busy-')
  beforeAll(async () => {
    cluster = await PrivateCluster.start({settings: {max_connections: '80'}})
  })
  afterAll(async () => {
    dir.cleanup()
    await cluster?.destroy()
  })

  it('loses no insert, fails none, holds none longer than the lock timeout plus a margin, and finishes', async () => {
    const db = uniqueDb()
    await cluster.createV030(db, {messages: 50_000})
    let running = true
    const stats = {acked: 0, deadlocks: 0, lockTimeouts: 0, other: [] as string[]}
    const clients = Array.from({length: WRITERS}, () =>
      postgres({
        connection: {application_name: 'busy-writer', lock_timeout: String(LOCK_TIMEOUT + MARGIN)},
        database: db,
        host: cluster.host,
        max: 1,
        onnotice: () => {},
        port: cluster.port,
        user: cluster.user,
      }),
    )
    const writers = clients.map(async (sql, i) => {
      const channels = await sql<{id: string}[]>`select id from nchat_channels order by id`
      for (let n = 0; running; n++) {
        try {
          await sql`insert into nchat_messages (channel_id, content) values (${channels[(i + n) % channels.length].id}, ${`busy writer ${i}`})`
          stats.acked++
        } catch (error) {
          const code = (error as {code?: string}).code
          if (code === '40P01') stats.deadlocks++
          else if (code === '55P03') stats.lockTimeouts++
          else stats.other.push(String((error as Error).message))
        }
      }
    })
    try {
      await until('the writers to write', () => stats.acked > 100)
      const run = new CliRun(cliArgs('migrate', {backupDir: path.join(dir.dir, db), db}, ['--lock-timeout', String(LOCK_TIMEOUT)]), cluster.env())
      const r = await run.done
      running = false
      await Promise.all(writers)
      const out = r.stdout + r.stderr
      console.log(
        `busy writers: ${stats.acked} inserts acknowledged, ${stats.deadlocks} deadlocks, ${stats.lockTimeouts} lock waits over ${LOCK_TIMEOUT + MARGIN} ms, ${stats.other.length} other errors`,
      )
      if (r.code !== 0) expect(isOneTrueSentence(errorMessage(r.stderr)), out).toBe(true)
      expect(r.code, out).toBe(0)
      expect(stats.deadlocks, out).toBe(0)
      expect(stats.lockTimeouts, out).toBe(0)
      expect(stats.other).toEqual([])
      const [{n}] = await cluster.with(db, (sql) => sql<{n: number}[]>`select count(*)::int as n from nchat_messages where content like 'busy writer %'`)
      expect(n).toBe(stats.acked)
      const left = await whatIsLeft(cluster, db, path.join(dir.dir, db))
      expect(left.ledger).toEqual([13, 14, 15, 16])
      expect(noDebris(left), JSON.stringify(left)).toBe(true)
      const v = await runToEnd(cluster, ['verify', '--local', '--database', db])
      expect(v.code, v.out).toBe(0)
    } finally {
      running = false
      await Promise.allSettled(writers)
      for (const c of clients) await c.end({timeout: 2}).catch(() => {})
      await cluster.dropDatabase(db).catch(() => {})
    }
  })
})
