// Rows for `maintain cleanup` and `maintain report` on a migrated database, made set-based: devices with
// identity keys and one active signed prekey each, one-time prekeys and audit log rows of known classes and ages
// relative to the cleanup limits. Shared by the tests (test/maintain/*) and the benchmark (bench/run.js).
//
// Classes (the generator decides them; the tests compare what is left against them, not against the predicate):
//   prekeys, per device, by prekey_id % 10:  0-3 old consumed (delete) · 4-5 recently consumed (keep) ·
//                                            6-9 unconsumed, created long ago (keep)
//   audit rows, by n % 10:                   0-5 older than the limit (delete) · 6-8 a day younger than it (keep) ·
//                                            9 an hour old (keep); metadata->>'class' says which
//   signed prekeys, by device number % 3:    0 rotated 10 days ago (stale at 7 days) · 1-2 rotated yesterday
const q = (s) => `"${s.replaceAll('"', '""')}"`

export function expectedCounts({devices, prekeysPerDevice, auditRows}) {
  let oldPrekeys = 0
  for (let k = 1; k <= prekeysPerDevice; k++) if (k % 10 <= 3) oldPrekeys++
  let oldAudit = 0
  for (let n = 1; n <= auditRows; n++) if (n % 10 <= 5) oldAudit++
  let unconsumed = 0
  for (let k = 1; k <= prekeysPerDevice; k++) if (k % 10 >= 6) unconsumed++
  let stale = 0
  for (let i = 1; i <= devices; i++) if (i % 3 === 0) stale++
  return {
    auditDelete: oldAudit,
    auditKeep: auditRows - oldAudit,
    prekeyDelete: oldPrekeys * devices,
    prekeyKeep: (prekeysPerDevice - oldPrekeys) * devices,
    staleSignedPrekeyDevices: stale,
    unconsumedPerDevice: unconsumed,
  }
}

/**
 * @param {import('postgres').Sql} sql connected to the migrated database
 * @param {{schema?: string, devices: number, prekeysPerDevice: number, auditRows: number, auditDays?: number, prekeyDays?: number}} o
 */
export async function seedMaintenance(sql, o) {
  const s = q(o.schema ?? 'public')
  const auditDays = o.auditDays ?? 90
  const prekeyDays = o.prekeyDays ?? 30
  await sql.unsafe(`
    insert into ${s}.nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted)
    select 'dev-' || i, u.id, decode(md5('ik' || i), 'hex'), decode(md5('ikp' || i), 'hex')
    from generate_series(1, ${o.devices}) i
    join lateral (select id from ${s}.nchat_users order by id offset (i % (select count(*) from ${s}.nchat_users)) limit 1) u on true`)
  await sql.unsafe(`
    insert into ${s}.nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature, rotation_date, created_at)
    select 'dev-' || i, 1, decode(md5('sp' || i), 'hex'), decode(md5('spp' || i), 'hex'), decode(md5('sig' || i) || md5('sig2' || i), 'hex'),
           now() - case when i % 3 = 0 then interval '10 days' else interval '1 day' end,
           now() - case when i % 3 = 0 then interval '10 days' else interval '1 day' end
    from generate_series(1, ${o.devices}) i`)
  await sql.unsafe(`
    insert into ${s}.nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, is_consumed, consumed_at, created_at)
    select 'dev-' || i, k, decode(md5('pk' || i || '-' || k), 'hex'), decode(md5('pkp' || i || '-' || k), 'hex'),
           k % 10 <= 5,
           case when k % 10 <= 3 then now() - interval '${prekeyDays + 1} days' - k * interval '1 minute'
                when k % 10 <= 5 then now() - interval '${prekeyDays - 1} days'
           end,
           now() - interval '100 days'
    from generate_series(1, ${o.devices}) i, generate_series(1, ${o.prekeysPerDevice}) k`)
  await sql.unsafe(`
    insert into ${s}.nchat_e2ee_audit_log (event_type, device_id, metadata, created_at)
    select (array['device_keys_generated','session_established','signed_prekey_rotated','prekeys_replenished'])[1 + n % 4],
           'dev-' || (1 + n % ${o.devices}),
           jsonb_build_object('class', case when n % 10 <= 5 then 'old' else 'keep' end),
           case when n % 10 <= 5 then now() - interval '${auditDays + 1} days' - n * interval '1 second'
                when n % 10 <= 8 then now() - interval '${auditDays - 1} days'
                else now() - interval '1 hour' end
    from generate_series(1, ${o.auditRows}) n`)
  return expectedCounts(o)
}

/**
 * Prekeys whose two columns disagree (consumed without a time, unconsumed with an old time), on device dev-1.
 * Returns how many went in: a schema with a CHECK tying the columns together refuses them, and then they cannot exist.
 */
export async function seedInconsistentPrekeys(sql, {schema = 'public', prekeyDays = 30} = {}) {
  const s = q(schema)
  let inserted = 0
  for (const [id, consumed, at] of [
    [1_000_001, true, 'null'],
    [1_000_002, false, `now() - interval '${prekeyDays + 5} days'`],
  ]) {
    try {
      await sql.unsafe(`insert into ${s}.nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted, is_consumed, consumed_at)
        values ('dev-1', ${id}, '\\x00', '\\x00', ${consumed}, ${at})`)
      inserted++
    } catch (error) {
      if (error.code !== '23514') throw error
    }
  }
  return inserted
}
