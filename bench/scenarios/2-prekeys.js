// Scenario 2: prekey upload and bundle fetch (D2)

import {cli, createV030Database, dropDb, GUIDE_SQL_FILE, log, mustRun, pg, PREFIX, psqlArgs, scratchDir, sidesOf} from '../lib/harness.js'
import {cell, fmtNum, ratio, stats, table} from '../lib/stats.js'

export const title = '2. Prekey upload and bundle fetch (D2)'

export const what = (cfg) =>
  `Two databases per size, ${cfg.devices.map((d) => fmtNum(d)).join(' and ')} devices (2 a user), each with an identity key, an active signed prekey and 5 one-time prekeys (loaded set-based). `
  + `Guide: its SQL applied with psql (materialized view \`nchat_prekey_bundles\` refreshed CONCURRENTLY by three statement triggers). Ours: migrated by \`migrate\` (plain view with LATERAL … LIMIT 1). `
  + `Upload: one new device as an app sends it, 1 identity key + 1 signed prekey + ${PREKEYS_PER_UPLOAD} one-time prekeys, ${2 + PREKEYS_PER_UPLOAD} INSERT statements in one transaction. `
  + `Fetch: \`SELECT * FROM nchat_prekey_bundles WHERE device_id = $1\` for that device (median of 21 per run). Claim: fetch and consume one one-time prekey (guide: SELECT + UPDATE in a transaction; ours: \`nchat_claim_prekey_bundle($1)\`).`

function keySql(devices) {
  // Two devices a user; keys are deterministic byte strings of the real sizes (32-byte publics, 64-byte signatures).
  return `
INSERT INTO nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted, created_at)
SELECT 'dev-' || i, md5('user:' || ((i - 1) / 2 + 1))::uuid, sha256(('ik:' || i)::bytea), sha512(('ikp:' || i)::bytea) || sha256(('ikp:' || i)::bytea),
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1, ${devices}) i;
INSERT INTO nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature, created_at)
SELECT 'dev-' || i, 1, sha256(('spk:' || i)::bytea), sha512(('spkp:' || i)::bytea) || sha256(('spkp:' || i)::bytea), sha512(('sig:' || i)::bytea),
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1, ${devices}) i;
INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, created_at)
SELECT 'dev-' || i, k, sha256(('otk:' || i || ':' || k)::bytea), sha512(('otkp:' || i || ':' || k)::bytea) || sha256(('otkp:' || i || ':' || k)::bytea),
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' + k * interval '1 millisecond'
  FROM generate_series(1, ${devices}) i, generate_series(1, 5) k;`
}

const PREKEYS_PER_UPLOAD = 20

/** One device's key upload as an app does it: 1 identity key, 1 signed prekey, 20 one-time prekeys, one statement each, in one transaction. */
async function uploadDevice(sql, deviceId, userId) {
  const b = (s) => Buffer.from(s.padEnd(32, '.').slice(0, 32))
  const t0 = performance.now()
  await sql.begin(async (tx) => {
    await tx`insert into nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted) values (${deviceId}, ${userId}, ${b(`ik${deviceId}`)}, ${Buffer.concat([b('a'), b('b'), b('c')])})`
    await tx`insert into nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature) values (${deviceId}, 1, ${b(`spk${deviceId}`)}, ${Buffer.concat([b('a'), b('b'), b('c')])}, ${Buffer.concat([b('s'), b('t')])})`
    for (let k = 1; k <= PREKEYS_PER_UPLOAD; k++) {
      await tx`insert into nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted) values (${deviceId}, ${k}, ${b(`otk${k}${deviceId}`)}, ${Buffer.concat([b('a'), b('b'), b('c')])})`
    }
  })
  return performance.now() - t0
}

export async function measure(cfg) {
  const results = {}
  const project = scratchDir('s2')
  for (const devices of cfg.devices) {
    const users = Math.ceil(devices / 2)
    const dbs = {guide: `${PREFIX}_s2_guide_${devices}`, ours: `${PREFIX}_s2_ours_${devices}`}
    results[devices] = {guide: {upload: [], fetch: [], claim: [], fetchOk: []}, ours: {upload: [], fetch: [], claim: [], fetchOk: []}}
    try {
      for (const way of ['guide', 'ours']) {
        await createV030Database(dbs[way], {users, channels: 10, messages: 2_000})
        if (way === 'guide') await mustRun('psql', psqlArgs(dbs[way], '-v', 'ON_ERROR_STOP=1', '-f', GUIDE_SQL_FILE))
        else await cli(['db', 'e2ee', 'migrate', '--yes', '--json', '--skip-backup', '--skip-dryrun', '-d', dbs[way]], project)
        const sql = pg(dbs[way])
        const t0 = performance.now()
        await sql.unsafe(keySql(devices)) // set-based: one statement a table (so the guide's triggers refresh 3 times)
        await sql.unsafe('ANALYZE')
        await sql.end({timeout: 2})
        log(`s2 ${way} ${devices} devices: keys loaded in ${fmtNum(performance.now() - t0, 'ms')}`)
      }
      for (let r = 1; r <= cfg.runs; r++) {
        for (const way of sidesOf(r, ['guide', 'ours'])) {
          const sql = pg(dbs[way])
          try {
            const deviceId = `bench-device-${r}`
            const [{userId}] = await sql`select md5('user:1')::uuid as "userId"`
            const uploadMs = await uploadDevice(sql, deviceId, userId)
            // Bundle fetch: median of 21 fetches of this device's bundle (sub-millisecond queries: one alone is noise).
            const f = []
            let rows = 0
            for (let i = 0; i < 21; i++) {
              const t = performance.now()
              const got = await sql`select * from nchat_prekey_bundles where device_id = ${deviceId}`
              f.push(performance.now() - t)
              rows = got.length
            }
            // Session setup: fetch a bundle and consume its one-time prekey. Guide: SELECT from the view, then
            // UPDATE the prekey (its trigger refreshes the view). Ours: the atomic claim function.
            const tc = performance.now()
            if (way === 'guide') {
              await sql.begin(async (tx) => {
                const [b] = await tx`select * from nchat_prekey_bundles where device_id = ${deviceId}`
                await tx`update nchat_one_time_prekeys set is_consumed = true, consumed_at = now() where device_id = ${deviceId} and prekey_id = ${b.one_time_prekey_id}`
              })
            } else {
              await sql`select * from nchat_claim_prekey_bundle(${deviceId})`
            }
            const claimMs = performance.now() - tc
            const x = results[devices][way]
            x.upload.push(uploadMs)
            x.fetch.push(stats(f).median)
            x.claim.push(claimMs)
            x.fetchOk.push(rows === 1)
            log(
              `s2 ${devices} devices run ${r} ${way}: upload ${fmtNum(uploadMs, 'ms')}, fetch ${fmtNum(stats(f).median, 'ms')} (${rows} row), claim ${fmtNum(claimMs, 'ms')}`,
            )
          } finally {
            await sql.end({timeout: 2})
          }
        }
      }
    } finally {
      for (const db of Object.values(dbs)) await dropDb(db)
    }
  }
  return results
}

export function report(cfg, res) {
  const rows = []
  const texts = []
  for (const devices of cfg.devices) {
    const g = res[devices].guide
    const o = res[devices].ours
    rows.push([`${fmtNum(devices)} devices: upload (22 INSERTs, 1 tx)`, cell(g.upload, 'ms'), cell(o.upload, 'ms'), ratio(o.upload, g.upload)])
    rows.push([`${fmtNum(devices)} devices: bundle fetch (1 device)`, cell(g.fetch, 'ms'), cell(o.fetch, 'ms'), ratio(o.fetch, g.fetch)])
    rows.push([`${fmtNum(devices)} devices: claim (fetch + consume 1 prekey)`, cell(g.claim, 'ms'), cell(o.claim, 'ms'), ratio(o.claim, g.claim)])
    texts.push(
      `at ${fmtNum(devices)} devices an upload took ${fmtNum(stats(g.upload).median, 'ms')} with the guide's materialized view (${fmtNum(stats(g.upload).median / (2 + PREKEYS_PER_UPLOAD), 'ms')} a statement) against ${fmtNum(stats(o.upload).median, 'ms')} with our plain view`,
    )
  }
  const bad = cfg.devices.flatMap((d) => ['guide', 'ours'].filter((w) => res[d][w].fetchOk.some((ok) => !ok)).map((w) => `${w} at ${d}`))
  const t = table(['operation', 'guide (matview + refresh triggers)', 'ours (plain view)', 'ours/guide'], rows)
  const text =
    `Every statement on a key table makes the guide's trigger refresh the whole materialized view, so the cost grows with the number of devices: ${texts.join('; ')}. `
    + `A fetch reads one device's row in both (precomputed in the matview; two LIMIT 1 index probes in our view): ${cfg.devices.map((d) => `${fmtNum(stats(res[d].guide.fetch).median, 'ms')} vs ${fmtNum(stats(res[d].ours.fetch).median, 'ms')} at ${fmtNum(d)} devices`).join(', ')}. `
    + `Consuming a one-time prekey is a statement on a key table too, so in the guide each session setup also pays a refresh. `
    + (bad.length
      ? `The fetch did not return exactly one bundle for the new device in: ${bad.join(', ')}.`
      : `Both returned exactly one fresh bundle for the new device in every run.`)
  return {table: t, text}
}
