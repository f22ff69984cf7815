/**
 * How nChat's application reaches the tables of 013-016 through Hasura: one entry per tracked table or view,
 * with nChat's conventions (role `user`, rows filtered to X-Hasura-User-Id, user_id preset on insert, the
 * `user` relationship on call participants). Written to the project's metadata by ./metadata.ts, and used by
 * the tests to send each application operation the way Hasura compiles it.
 */

export const ROLE = 'user'
export const SESSION_USER = 'X-Hasura-User-Id'

type BoolExp = Record<string, unknown>

export interface TablePermission {
  columns: string[] | '*'
  filter?: BoolExp
  check?: BoolExp
  /** Column presets from the session (Hasura's `set`). */
  set?: Record<string, string>
}

export interface Relationship {
  name: string
  kind: 'object' | 'array'
  /** object: the column of this table; array: the column of the other table. */
  column: string
  table?: string
}

export interface TableSpec {
  name: string
  /** GraphQL name of a column where it differs from the column's name (Hasura's column_config custom_name). */
  graphqlNames?: Record<string, string>
  relationships?: Relationship[]
  select: TablePermission
  insert?: TablePermission
  update?: TablePermission
  delete?: {filter: BoolExp}
}

export interface FunctionSpec {
  name: string
  exposedAs: 'mutation' | 'query'
}

const me = {_eq: SESSION_USER}
const own = {user_id: me}
const preset = {user_id: SESSION_USER}

/** A stream's settings, which the broadcaster sets when creating it and may change later. */
const STREAM_SETTINGS = ['max_resolution', 'enable_chat', 'enable_reactions', 'enable_qa', 'chat_mode', 'tags']

export const TABLES: TableSpec[] = [
  {
    delete: {filter: own},
    graphqlNames: {recovery_code_hash: 'recovery_code_hash_text', recovery_code_hash_bytes: 'recovery_code_hash'},
    insert: {
      check: own,
      columns: [
        'salt',
        'key_hash',
        'iterations',
        'algorithm',
        'master_key_backup_encrypted',
        'recovery_code_hash_bytes',
        'master_key_salt',
        'pbkdf2_iterations',
        'recovery_code_hash',
      ],
      set: preset,
    },
    name: 'nchat_user_master_keys',
    select: {columns: '*', filter: own},
    update: {columns: ['key_hash', 'updated_at', 'last_used_at', 'master_key_backup_encrypted', 'recovery_code_hash_bytes', 'recovery_code_hash'], filter: own},
  },
  {
    delete: {filter: own},
    insert: {check: own, columns: ['device_id', 'identity_key_public', 'identity_key_private_encrypted', 'registration_id', 'is_active'], set: preset},
    name: 'nchat_identity_keys',
    select: {columns: '*', filter: own},
    update: {columns: ['identity_key_public', 'identity_key_private_encrypted', 'last_used_at', 'is_active'], filter: own},
  },
  {
    delete: {filter: own},
    insert: {
      check: own,
      columns: [
        'device_id',
        'key_id',
        'public_key',
        'private_key_encrypted',
        'signature',
        'expires_at',
        'is_active',
        'signed_prekey_id',
        'signed_prekey_public',
        'signed_prekey_private_encrypted',
        'rotation_date',
      ],
      set: preset,
    },
    name: 'nchat_signed_prekeys',
    select: {columns: '*', filter: own},
    update: {columns: ['public_key', 'private_key_encrypted', 'signature', 'expires_at', 'is_active'], filter: own},
  },
  {
    delete: {filter: own},
    insert: {
      check: own,
      columns: ['device_id', 'key_id', 'public_key', 'private_key_encrypted', 'prekey_id', 'prekey_public', 'prekey_private_encrypted'],
      set: preset,
    },
    name: 'nchat_one_time_prekeys',
    select: {columns: '*', filter: own},
    // A peer consumes another user's prekey (ConsumeOneTimePreKey): only unconsumed rows, only these columns.
    update: {columns: ['is_consumed', 'consumed_at', 'consumed_by'], filter: {is_consumed: {_eq: false}}},
  },
  {
    delete: {filter: own},
    insert: {
      check: own,
      columns: [
        'device_id',
        'peer_user_id',
        'peer_device_id',
        'session_state_encrypted',
        'root_key_hash',
        'chain_key_hash',
        'send_counter',
        'receive_counter',
        'is_initiator',
        'expires_at',
      ],
      set: preset,
    },
    name: 'nchat_signal_sessions',
    select: {columns: '*', filter: own},
    update: {
      columns: [
        'session_state_encrypted',
        'root_key_hash',
        'chain_key_hash',
        'send_counter',
        'receive_counter',
        'last_message_sent_at',
        'last_message_received_at',
        'last_ratchet_at',
        'is_active',
        'expires_at',
      ],
      filter: own,
    },
  },
  {
    delete: {filter: own},
    insert: {
      check: own,
      columns: ['peer_user_id', 'safety_number', 'user_identity_fingerprint', 'peer_identity_fingerprint', 'is_verified', 'verification_method'],
      set: preset,
    },
    name: 'nchat_safety_numbers',
    select: {columns: '*', filter: own},
    update: {
      columns: [
        'safety_number',
        'user_identity_fingerprint',
        'peer_identity_fingerprint',
        'updated_at',
        'is_verified',
        'verified_at',
        'verified_by_user_id',
        'verification_method',
      ],
      filter: own,
    },
  },
  {
    insert: {check: own, columns: ['device_id', 'event_type', 'event_data', 'ip_address', 'user_agent'], set: preset},
    name: 'nchat_e2ee_audit_log',
    select: {columns: '*', filter: own},
  },
  // Public halves of every active device's keys: anyone signed in may fetch a bundle.
  {name: 'nchat_prekey_bundles', select: {columns: '*', filter: {}}},
  {
    insert: {check: {caller_id: me}, columns: ['call_id', 'type', 'status', 'caller_id', 'channel_id', 'metadata', 'started_at']},
    name: 'nchat_calls',
    relationships: [
      {column: 'call_id', kind: 'array', name: 'participants', table: 'nchat_call_participants'},
      {column: 'caller_id', kind: 'object', name: 'caller'},
      {column: 'channel_id', kind: 'object', name: 'channel'},
    ],
    select: {columns: '*', filter: {_or: [{caller_id: me}, {participants: own}]}},
    update: {columns: ['status', 'started_at', 'ended_at', 'duration', 'metadata', 'updated_at'], filter: {_or: [{caller_id: me}, {participants: own}]}},
  },
  {
    insert: {
      check: {_or: [own, {call: {caller_id: me}}]},
      columns: ['call_id', 'user_id', 'joined_at', 'left_at', 'is_muted', 'is_video_enabled', 'is_screen_sharing'],
    },
    name: 'nchat_call_participants',
    relationships: [
      {column: 'user_id', kind: 'object', name: 'user'},
      {column: 'call_id', kind: 'object', name: 'call'},
    ],
    select: {columns: '*', filter: {_or: [own, {call: {_or: [{caller_id: me}, {participants: own}]}}]}},
    update: {columns: ['joined_at', 'left_at', 'is_muted', 'is_video_enabled', 'is_screen_sharing'], filter: {_or: [own, {call: {caller_id: me}}]}},
  },
  {
    insert: {check: {call: {_or: [{caller_id: me}, {participants: own}]}}, columns: ['call_id', 'event_type', 'metadata'], set: preset},
    name: 'nchat_call_events',
    relationships: [{column: 'call_id', kind: 'object', name: 'call'}],
    select: {columns: '*', filter: {call: {_or: [{caller_id: me}, {participants: own}]}}},
  },
  {
    // The rows hold the stream key and the ingest URL that carries it: the broadcaster's only.
    insert: {
      check: {broadcaster_id: me},
      columns: [
        'channel_id',
        'broadcaster_id',
        'title',
        'description',
        'thumbnail_url',
        'scheduled_at',
        'status',
        'stream_key',
        'ingest_url',
        ...STREAM_SETTINGS,
        'language',
      ],
    },
    name: 'nchat_streams',
    relationships: [
      {column: 'broadcaster_id', kind: 'object', name: 'broadcaster'},
      {column: 'stream_id', kind: 'array', name: 'viewers', table: 'nchat_stream_viewers'},
    ],
    select: {columns: '*', filter: {broadcaster_id: me}},
    update: {
      columns: [
        'title',
        'description',
        'thumbnail_url',
        'scheduled_at',
        'status',
        'started_at',
        'ended_at',
        'hls_manifest_url',
        ...STREAM_SETTINGS,
        'viewer_count',
        'peak_viewer_count',
        'total_view_count',
        'total_chat_messages',
        'total_reactions',
        'recording_url',
        'recording_duration_seconds',
      ],
      filter: {broadcaster_id: me},
    },
  },
  {
    insert: {check: own, columns: ['stream_id', 'session_id', 'selected_quality'], set: preset},
    name: 'nchat_stream_viewers',
    relationships: [{column: 'stream_id', kind: 'object', name: 'stream'}],
    select: {columns: '*', filter: {_or: [own, {stream: {broadcaster_id: me}}]}},
    update: {columns: ['left_at', 'total_watch_time_seconds', 'selected_quality', 'sent_chat_messages', 'sent_reactions'], filter: own},
  },
]

export const FUNCTIONS: FunctionSpec[] = [{exposedAs: 'mutation', name: 'nchat_claim_prekey_bundle'}]

/** Columns 014 adds to nchat_messages that the application inserts (nChat lists insert columns explicitly). */
export const MESSAGE_INSERT_COLUMNS = ['is_encrypted', 'encrypted_payload', 'sender_device_id', 'encryption_version']

/** The column behind a GraphQL field of a table (Hasura's column_config, inverted). */
export function columnOf(table: string, field: string): string {
  const spec = TABLES.find((t) => t.name === table)
  for (const [column, name] of Object.entries(spec?.graphqlNames ?? {})) if (name === field) return column
  return field
}
