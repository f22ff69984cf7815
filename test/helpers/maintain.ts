import postgres from 'postgres'

import {migrateUp} from '../../src/migrations/runner.js'
import {seedMaintenance} from '../../scripts/maintain-fixture.mjs'
import {engineSql, packaged} from './engine.js'
import {ADMIN} from './fixture.js'

/** Apply 013-016 with the engine and add devices, prekeys and audit rows of known classes. */
export async function migrateAndSeed(database: string, o: {devices: number; prekeysPerDevice: number; auditRows: number; to?: number}) {
  const sql = engineSql(database)
  try {
    await migrateUp({log: () => {}, migrations: packaged(), sql, to: o.to})
    return await seedMaintenance(sql, o)
  } finally {
    await sql.end()
  }
}

/**
 * A writer on the rows cleanup deletes, as the app would touch them: it records a new audit event, updates old
 * audit rows (what ON DELETE SET NULL does when a user is deleted) and old consumed prekeys (what a device
 * deletion's cascade locks), each class both at random and at the oldest row still there, which is the row the
 * next cleanup batch takes, so the writer keeps running into the batches' row locks. Row changes that keep every
 * row in its class.
 *
 * With `lockTimeoutMs` the writer runs with that lock_timeout itself: the server then ends any of its statements
 * that waits on a lock longer than that (SQLSTATE 55P03, counted in `lockTimeouts`), so "no lock timeout" is
 * "never waited longer than the lock timeout", measured by the server on the writer's own lock waits rather than
 * by the wall time of its statements (which also holds its own commit flush and the scheduling of a busy machine).
 */
export function startKeyWriter(database: string, {lockTimeoutMs, pauseMs = 5}: {lockTimeoutMs?: number; pauseMs?: number} = {}) {
  const connection = lockTimeoutMs === undefined ? {} : {lock_timeout: lockTimeoutMs}
  const sql = postgres({...ADMIN, connection, database, max: 1, onnotice: () => {}})
  const latencies: number[] = []
  let running = true
  let failures = 0
  let lockTimeouts = 0
  let inserted = 0
  const done = (async () => {
    const [{maxAudit}] = await sql<{maxAudit: number}[]>`select coalesce(max(id), 1)::int as "maxAudit" from nchat_e2ee_audit_log`
    const [{maxPrekey}] = await sql<{maxPrekey: number}[]>`select coalesce(max(id), 1)::int as "maxPrekey" from nchat_one_time_prekeys`
    let i = 0
    while (running) {
      const t = performance.now()
      try {
        switch (i++ % 5) {
          case 0: {
            await sql`insert into nchat_e2ee_audit_log (event_type, metadata) values ('session_established', '{"class": "new"}')`
            inserted++
            break
          }
          case 1: {
            await sql`update nchat_e2ee_audit_log set user_id = null where id = (
              select id from nchat_e2ee_audit_log where created_at < now() - interval '90 days' order by created_at limit 1)`
            break
          }
          case 2: {
            await sql`update nchat_e2ee_audit_log set user_id = null where id = ${1 + Math.floor(Math.random() * maxAudit)}`
            break
          }
          case 3: {
            await sql`update nchat_one_time_prekeys set prekey_public = prekey_public where id = (
              select id from nchat_one_time_prekeys where is_consumed and consumed_at < now() - interval '30 days' order by consumed_at limit 1)`
            break
          }
          default: {
            await sql`update nchat_one_time_prekeys set prekey_public = prekey_public where id = ${1 + Math.floor(Math.random() * maxPrekey)} and is_consumed`
          }
        }
      } catch (error) {
        if ((error as {code?: string}).code === '55P03') lockTimeouts++
        else failures++
      }
      latencies.push(performance.now() - t)
      await new Promise((r) => setTimeout(r, pauseMs))
    }
  })()
  return {
    async stop() {
      running = false
      await done
      await sql.end()
      return {count: latencies.length, failures, inserted, lockTimeouts, maxMs: Math.max(0, ...latencies)}
    },
  }
}

/** What is left of each generated class. */
export async function classCounts(database: string) {
  const sql = postgres({...ADMIN, database, max: 1, onnotice: () => {}})
  try {
    const [r] = await sql<{auditOld: number; auditKeep: number; auditNew: number; prekeyOld: number; prekeyKeep: number; unconsumed: number}[]>`
      select
        (select count(*)::int from nchat_e2ee_audit_log where metadata->>'class' = 'old') as "auditOld",
        (select count(*)::int from nchat_e2ee_audit_log where metadata->>'class' = 'keep') as "auditKeep",
        (select count(*)::int from nchat_e2ee_audit_log where metadata->>'class' = 'new') as "auditNew",
        (select count(*)::int from nchat_one_time_prekeys where prekey_id < 1000000 and prekey_id % 10 <= 3) as "prekeyOld",
        (select count(*)::int from nchat_one_time_prekeys where prekey_id < 1000000 and prekey_id % 10 > 3) as "prekeyKeep",
        (select count(*)::int from nchat_one_time_prekeys where not is_consumed) as unconsumed`
    return r
  } finally {
    await sql.end()
  }
}
