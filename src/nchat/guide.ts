/** nChat's v0.4.0 migration guide: its objects that must be gone, its data invariants and its "Query Performance" table. */

/** The guide's objects (D2) that must be gone once 014 is applied. */
export const GUIDE_LEFTOVERS = {
  functions: ['refresh_prekey_bundles'],
  indexes: ['idx_prekey_bundles_device', 'idx_prekey_bundles_user'],
  since: 14,
  triggers: [
    {name: 'refresh_prekey_bundles_on_identity_key', table: 'nchat_identity_keys'},
    {name: 'refresh_prekey_bundles_on_signed_prekey', table: 'nchat_signed_prekeys'},
    {name: 'refresh_prekey_bundles_on_one_time_prekey', table: 'nchat_one_time_prekeys'},
  ],
} as const

/** The guide's "Query Performance" table, with the tables whose indexes each query must use. */
export const PLAN_CHECKS = [
  {
    expectTables: ['nchat_identity_keys', 'nchat_signed_prekeys', 'nchat_one_time_prekeys'],
    guideIndex: 'idx_prekey_bundles_device',
    name: 'bundle fetch',
    param: 'device',
    relation: 'nchat_prekey_bundles',
    since: 14,
    where: 'device_id = $1',
  },
  {
    expectTables: ['nchat_signal_sessions'],
    guideIndex: 'idx_signal_sessions_active',
    name: 'session lookup',
    param: 'device',
    relation: 'nchat_signal_sessions',
    since: 13,
    where: 'device_id = $1 AND is_active = TRUE',
  },
  {
    expectTables: ['nchat_one_time_prekeys'],
    guideIndex: 'idx_one_time_prekeys_available',
    name: 'available prekeys',
    param: 'device',
    relation: 'nchat_one_time_prekeys',
    since: 13,
    where: 'device_id = $1 AND is_consumed = FALSE',
  },
  {
    expectTables: ['nchat_safety_numbers'],
    guideIndex: 'idx_safety_numbers_verified',
    name: 'verified safety numbers',
    param: 'uuid',
    relation: 'nchat_safety_numbers',
    since: 13,
    where: 'user_id = $1 AND verified_at IS NOT NULL',
  },
] as const

/**
 * Data that must hold on a database in use: encrypted messages, consumed prekeys and ended calls are normal
 * life. Each query counts the rows that break an invariant; the partial indexes keep them cheap.
 */
export const DATA_CHECKS = [
  {
    columns: ['is_encrypted', 'encrypted_payload'],
    ok: 'every encrypted message carries its encrypted payload',
    query: 'is_encrypted = true and encrypted_payload is null',
    since: 14,
    table: 'nchat_messages',
    what: 'encrypted messages without an encrypted payload (unreadable)',
  },
  {
    columns: ['is_consumed', 'consumed_at'],
    ok: 'every consumed one-time prekey has its consumption time',
    query: 'is_consumed = true and consumed_at is null',
    since: 13,
    table: 'nchat_one_time_prekeys',
    what: 'one-time prekeys marked consumed without consumed_at',
  },
] as const
