import postgres from 'postgres'

import {migrateUp} from '../../src/migrations/runner.js'
import {seedMaintenance} from '../../scripts/maintain-fixture.mjs'
import {engineSql, packaged} from './engine.js'
import {ADMIN} from './fixture.js'

/** Apply 013-016 with the engine and add devices, prekeys and audit rows of known classes. */
export async function migrateAndSeed(database: string, o: {devices: number; prekeysPerDevice: number; auditRows: number}) {
  const sql = engineSql(database)
  try {
    await migrateUp({log: () => {}, migrations: packaged(), sql})
    return await seedMaintenance(sql, o)
  } finally {
    await sql.end()
  }
}

/**
 * A writer on the rows cleanup deletes, as the app would touch them: it records a new audit event, updates an
 * old audit row (what ON DELETE SET NULL does when a user is deleted) and an old consumed prekey (what a device
 * deletion's cascade locks). Row changes that keep every row in its class. Each operation's wait is recorded.
 */
export function startKeyWriter(database: string, pauseMs = 5) {
  const sql = postgres({...ADMIN, database, max: 1, onnotice: () => {}})
  const latencies: number[] = []
  let running = true
  let failures = 0
  let inserted = 0
  const done = (async () => {
    const [{maxAudit}] = await sql<{maxAudit: number}[]>`select coalesce(max(id), 1)::int as "maxAudit" from nchat_e2ee_audit_log`
    const [{maxPrekey}] = await sql<{maxPrekey: number}[]>`select coalesce(max(id), 1)::int as "maxPrekey" from nchat_one_time_prekeys`
    let i = 0
    while (running) {
      const t = performance.now()
      try {
        switch (i++ % 3) {
          case 0: {
            await sql`insert into nchat_e2ee_audit_log (event_type, metadata) values ('session_established', '{"class": "new"}')`
            inserted++
            break
          }
          case 1: {
            await sql`update nchat_e2ee_audit_log set user_id = null where id = ${1 + Math.floor(Math.random() * maxAudit)}`
            break
          }
          default: {
            await sql`update nchat_one_time_prekeys set prekey_public = prekey_public where id = ${1 + Math.floor(Math.random() * maxPrekey)} and is_consumed`
          }
        }
      } catch {
        failures++
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
      return {count: latencies.length, failures, inserted, maxMs: Math.max(0, ...latencies)}
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
