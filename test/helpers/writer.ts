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
    ...ADMIN,
    database,
    max: 1,
    onnotice: () => {},
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

export interface BusyWriterResult {
  /** Inserts that committed (each is one row with `content` = the writer's tag). */
  committed: number
  /** Errors by SQLSTATE (40P01: this insert was chosen as a deadlock victim). */
  errors: Record<string, number>
  maxMs: number
  /** Inserts that waited longer than `slowMs`. */
  slow: number
  /** Each insert's start (performance.now()) and duration, to tell a window's waits from another's. */
  samples: Array<[start: number, ms: number]>
}

/**
 * `connections` writers inserting messages back to back, as fast as the server takes them, each with a
 * channel and a user (so every insert runs the foreign-key checks on nchat_channels and nchat_users).
 * `deadlockTimeoutMs` is the writers' own deadlock_timeout: set low, a writer in a lock cycle detects it
 * (and fails) before the migration's lock_timeout ends the cycle.
 */
export function startBusyWriters(database: string, options: {connections: number; deadlockTimeoutMs: number; tag: string; schema?: string; slowMs: number}) {
  const schema = options.schema ?? 'public'
  const pools = Array.from({length: options.connections}, () =>
    postgres({
      ...ADMIN,
      connection: {application_name: 'nself-e2ee-tests-busy-writer', deadlock_timeout: `${options.deadlockTimeoutMs}ms`},
      database,
      max: 1,
      onnotice: () => {},
    }),
  )
  const errors: Record<string, number> = {}
  let committed = 0
  let maxMs = 0
  let slow = 0
  const samples: Array<[number, number]> = []
  let running = true
  const loops = pools.map(async (sql, i) => {
    const [{channel, user}] = await sql.unsafe<{channel: string; user: string}[]>(
      `select (select id from "${schema}".nchat_channels order by id offset ${i} limit 1) as channel, (select id from "${schema}".nchat_users order by id offset ${i} limit 1) as user`,
    )
    while (running) {
      const t = performance.now()
      try {
        await sql.unsafe(`insert into "${schema}".nchat_messages (channel_id, user_id, content) values ($1, $2, $3)`, [channel, user, options.tag])
        committed++
      } catch (error) {
        const code = (error as {code?: string}).code ?? 'unknown'
        errors[code] = (errors[code] ?? 0) + 1
      }
      const ms = performance.now() - t
      samples.push([t, ms])
      maxMs = Math.max(maxMs, ms)
      if (ms > options.slowMs) slow++
    }
  })
  return {
    async stop(): Promise<BusyWriterResult> {
      running = false
      await Promise.all(loops)
      await Promise.all(pools.map((p) => p.end()))
      return {committed, errors, maxMs, samples, slow}
    },
  }
}
