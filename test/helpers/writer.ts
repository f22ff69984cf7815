import postgres from 'postgres'

import {ADMIN} from './fixture.js'

/**
 * A live writer: inserts one message at a time into nchat_messages, as the chat app would, and records how
 * long each insert waited. Used to measure what a migration does to writers.
 */
export function startWriter(database: string, schema = 'public', pauseMs = 10, opts: {lockTimeoutMs?: number} = {}) {
  // With lockTimeoutMs, an insert that waits for a lock longer than that fails (55P03) and is counted in
  // lockTimeouts: lock_timeout counts only the time spent waiting for a lock, not CPU or scheduling delays,
  // so the count is a measure of lock waits that holds on a loaded machine.
  const sql = postgres({
    ...ADMIN, database, max: 1, onnotice: () => {},
    ...(opts.lockTimeoutMs ? {connection: {lock_timeout: String(opts.lockTimeoutMs)}} : {}),
  })
  const latencies: number[] = []
  let running = true
  let failures = 0
  let lockTimeouts = 0
  const done = (async () => {
    const [{channel}] = await sql.unsafe<{channel: string}[]>(`select id as channel from "${schema}".nchat_channels limit 1`)
    while (running) {
      const t = performance.now()
      try {
        await sql.unsafe(`insert into "${schema}".nchat_messages (channel_id, content) values ($1, 'live write')`, [channel])
      } catch (error) {
        if ((error as {code?: string}).code === '55P03') lockTimeouts++
        else failures++
      }
      latencies.push(performance.now() - t)
      await new Promise((r) => setTimeout(r, pauseMs))
    }
  })()
  return {
    latencies,
    /** Inserts that have failed with lock_timeout so far. */
    get lockTimeouts() {
      return lockTimeouts
    },
    async stop() {
      running = false
      await done
      await sql.end()
      return {count: latencies.length, failures, lockTimeouts, maxMs: Math.max(0, ...latencies)}
    },
  }
}

/** Holds ACCESS SHARE on nchat_messages in an open transaction for `ms` (a long report query). */
export async function holdLongRead(database: string, ms: number, schema = 'public'): Promise<{done: Promise<void>}> {
  const sql = postgres({...ADMIN, database, max: 1, onnotice: () => {}})
  const conn = await sql.reserve()
  await conn.unsafe('begin')
  await conn.unsafe(`select count(*) from "${schema}".nchat_messages`)
  // Wrapped in an object: an async function returning a bare promise would wait for it.
  const done = (async () => {
    await new Promise((r) => setTimeout(r, ms))
    await conn.unsafe('commit')
    conn.release()
    await sql.end()
  })()
  return {done}
}
