/** nChat's table lists (each checked against the migrations in its tests). */

/** Tables whose row counts are compared with the backup manifest. */
export const ROW_COUNT_TABLES = ['nchat_users', 'nchat_channels', 'nchat_messages'] as const

/** The tables the migrations alter or validate against; their data is what a faithful dry run needs. */
export const TOUCHED_TABLES = ['nchat_users', 'nchat_channels', 'nchat_messages']

/** The new tables of 013-016, then the two existing tables 014 alters. */
export const VACUUM_TABLES: readonly string[] = [
  // 013 / 014: E2EE
  'nchat_user_master_keys',
  'nchat_identity_keys',
  'nchat_signed_prekeys',
  'nchat_one_time_prekeys',
  'nchat_signal_sessions',
  'nchat_safety_numbers',
  'nchat_e2ee_audit_log',
  // 015: calls
  'nchat_calls',
  'nchat_call_participants',
  'nchat_call_events',
  // 016: streaming
  'nchat_streams',
  'nchat_stream_viewers',
  // altered by 014
  'nchat_messages',
  'nchat_channels',
]
