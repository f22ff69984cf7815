// Every operation of nChat's application (shared/NCHAT-APP.md: frontend/src/graphql/e2ee.ts and calls.ts, the
// stream routes) on a database migrated to 016, sent as the application sends it: its own field names, its
// named conflict targets, user_id preset from the session the way Hasura does (test/helpers/hasura.ts, from the
// metadata this plugin writes). On both v0.3.0 layouts: this project's fixture (schema public) and nChat's own
// documented one (schema nchat). Then the round trip through both names and the guide's rules on app writes.
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import type postgres from 'postgres'

import {MIGRATIONS, applyFileAsEngine, connect, createV030Database, migrationFile, type V030Database} from '../helpers/fixture.js'
import {hasuraInsert, hasuraSelect, hasuraUpdate, type Session} from '../helpers/hasura.js'

const T = 120_000
const bytes = (s: string) => Buffer.from(s)
const user = async (sql: postgres.Sql, n: number) => (await sql`SELECT id FROM nchat_users WHERE username = ${`user${n}`}`)[0].id as string
const SAFETY = '1'.repeat(60)

for (const layout of ['project', 'reference'] as const) {
  describe(`nChat's application operations after migrate (${layout === 'project' ? "this project's fixture, schema public" : "nChat's documented v0.3.0, schema nchat"})`, () => {
    let db: V030Database
    let sql: postgres.Sql
    let alice: Session
    let bob: Session

    beforeAll(async () => {
      db = await createV030Database({layout, messages: 40})
      const applied: number[] = []
      for (const m of MIGRATIONS) {
        await applyFileAsEngine(db.name, migrationFile(m.version), {appliedVersions: applied.join(','), schema: db.schema})
        applied.push(m.version)
      }
      sql = connect(db.name, {schema: db.schema})
      alice = {userId: await user(sql, 1)}
      bob = {userId: await user(sql, 2)}
    }, T)

    afterAll(async () => {
      await sql?.end()
      await db?.drop()
    })

    it(
      'SaveMasterKey inserts through salt/iterations/recovery_code_hash (bytea) and upserts on nchat_user_master_keys_user_id_key; GetMasterKeyInfo reads them',
      async () => {
        const save = (keyHash: string) =>
          hasuraInsert(
            sql,
            alice,
            'nchat_user_master_keys',
            [
              {
                algorithm: null,
                iterations: 310000,
                key_hash: bytes(keyHash),
                master_key_backup_encrypted: bytes('backup'),
                recovery_code_hash: Buffer.from('ab'.repeat(32), 'hex'),
                salt: bytes('s'.repeat(32)),
              },
            ],
            {
              onConflict: {constraint: 'nchat_user_master_keys_user_id_key', updateColumns: ['key_hash', 'updated_at', 'last_used_at']},
              returning: ['id', 'created_at'],
            },
          )
        const [first] = await save('kh1')
        expect(first.id).toMatch(/^[0-9a-f-]{36}$/)
        const [second] = await save('kh2')
        expect(second.id).toBe(first.id)
        const [info] = await hasuraSelect(sql, alice, 'nchat_user_master_keys', {}, [
          'id',
          'salt',
          'key_hash',
          'iterations',
          'algorithm',
          'master_key_backup_encrypted',
          'recovery_code_hash',
          'created_at',
          'updated_at',
          'last_used_at',
        ])
        expect(info).toMatchObject({algorithm: 'PBKDF2-SHA256', iterations: 310000})
        expect(Buffer.from(info.key_hash as Buffer).toString()).toBe('kh2')
        expect(Buffer.from(info.recovery_code_hash as Buffer).toString('hex')).toBe('ab'.repeat(32))
        // The same row through the guide's names.
        const [g] = await sql`SELECT master_key_salt, pbkdf2_iterations, recovery_code_hash FROM nchat_user_master_keys WHERE user_id = ${alice.userId}`
        expect(g.pbkdf2_iterations).toBe(310000)
        expect(Buffer.from(g.master_key_salt).toString()).toBe('s'.repeat(32))
        expect(g.recovery_code_hash).toBe('ab'.repeat(32))
      },
      T,
    )

    it(
      'SaveIdentityKey upserts on nchat_identity_keys_user_id_device_id_key with registration_id; GetIdentityKeys and GetUserDevices read is_active, last_used_at',
      async () => {
        for (const [s, device, reg] of [
          [alice, 'alice-phone', 1111],
          [bob, 'bob-laptop', 2222],
        ] as const) {
          const save = () =>
            hasuraInsert(
              sql,
              s,
              'nchat_identity_keys',
              [{device_id: device, identity_key_private_encrypted: bytes(`${device}:priv`), identity_key_public: bytes(`${device}:pub`), registration_id: reg}],
              {
                onConflict: {
                  constraint: 'nchat_identity_keys_user_id_device_id_key',
                  updateColumns: ['identity_key_public', 'identity_key_private_encrypted', 'last_used_at'],
                },
                returning: ['id', 'device_id', 'registration_id'],
              },
            )
          const [a] = await save()
          const [b] = await save()
          expect(b).toEqual(a)
          expect(a.registration_id).toBe(reg)
        }
        const keys = await hasuraSelect(sql, alice, 'nchat_identity_keys', {device_id: 'alice-phone', is_active: true}, [
          'id',
          'device_id',
          'identity_key_public',
          'identity_key_private_encrypted',
          'registration_id',
          'created_at',
          'last_used_at',
          'is_active',
        ])
        expect(keys).toHaveLength(1)
        const devices = await hasuraSelect(sql, bob, 'nchat_identity_keys', {is_active: true, user_id: bob.userId}, [
          'device_id',
          'identity_key_public',
          'registration_id',
          'created_at',
          'last_used_at',
        ])
        expect(devices.map((d) => d.device_id)).toEqual(['bob-laptop'])
      },
      T,
    )

    it(
      'SaveSignedPreKey upserts on nchat_signed_prekeys_user_id_device_id_key_id_key through key_id/public_key/private_key_encrypted/expires_at; user_id comes from the session',
      async () => {
        const save = (pub: string) =>
          hasuraInsert(
            sql,
            bob,
            'nchat_signed_prekeys',
            [
              {
                device_id: 'bob-laptop',
                expires_at: new Date(Date.now() + 86_400_000),
                is_active: true,
                key_id: 7,
                private_key_encrypted: bytes('spk-priv'),
                public_key: bytes(pub),
                signature: bytes('sig'),
              },
            ],
            {
              onConflict: {
                constraint: 'nchat_signed_prekeys_user_id_device_id_key_id_key',
                updateColumns: ['public_key', 'private_key_encrypted', 'signature', 'expires_at', 'is_active'],
              },
              returning: ['id', 'key_id'],
            },
          )
        const [a] = await save('spk-pub-1')
        const [b] = await save('spk-pub-2')
        expect(b).toEqual(a)
        const rows = await hasuraSelect(
          sql,
          bob,
          'nchat_signed_prekeys',
          {device_id: 'bob-laptop', is_active: true},
          ['id', 'key_id', 'public_key', 'private_key_encrypted', 'signature', 'created_at', 'expires_at', 'is_active'],
          'created_at DESC',
        )
        expect(rows).toHaveLength(1)
        expect(Buffer.from(rows[0].public_key as Buffer).toString()).toBe('spk-pub-2')
        const [g] = await sql`SELECT user_id, signed_prekey_id, signed_prekey_public FROM nchat_signed_prekeys WHERE device_id = 'bob-laptop'`
        expect(g.user_id).toBe(bob.userId)
        expect(g.signed_prekey_id).toBe(7)
        expect(Buffer.from(g.signed_prekey_public).toString()).toBe('spk-pub-2')
      },
      T,
    )

    it(
      'SaveOneTimePreKeys inserts a batch, on nchat_one_time_prekeys_user_id_device_id_key_id_key with update_columns [] a repeat adds nothing; CheckPreKeyInventory counts them',
      async () => {
        const batch = [1, 2, 3].map((k) => ({
          device_id: 'bob-laptop',
          key_id: k,
          private_key_encrypted: bytes(`otp${k}:priv`),
          public_key: bytes(`otp${k}:pub`),
        }))
        const opts = {onConflict: {constraint: 'nchat_one_time_prekeys_user_id_device_id_key_id_key', updateColumns: []}, returning: ['id', 'key_id']}
        expect(await hasuraInsert(sql, bob, 'nchat_one_time_prekeys', batch, opts)).toHaveLength(3)
        expect(await hasuraInsert(sql, bob, 'nchat_one_time_prekeys', batch, opts)).toHaveLength(0)
        const [{n}] = await sql`SELECT count(*)::int AS n FROM nchat_one_time_prekeys WHERE device_id = 'bob-laptop' AND is_consumed = false`
        expect(n).toBe(3)
        const rows = await hasuraSelect(
          sql,
          bob,
          'nchat_one_time_prekeys',
          {device_id: 'bob-laptop', is_consumed: false},
          ['id', 'key_id', 'public_key', 'private_key_encrypted', 'created_at', 'consumed_at', 'consumed_by', 'is_consumed'],
          'key_id',
        )
        expect(rows.map((r) => r.key_id)).toEqual([1, 2, 3])
      },
      T,
    )

    it(
      'GetPreKeyBundle reads registration_id and signed_prekey_signature from nchat_prekey_bundles',
      async () => {
        const rows = await sql`SELECT user_id, device_id, identity_key_public, registration_id, signed_prekey_id, signed_prekey_public, signed_prekey_signature,
                                    one_time_prekey_id, one_time_prekey_public, last_used_at, created_at
                               FROM nchat_prekey_bundles WHERE user_id = ${bob.userId} AND device_id = 'bob-laptop' LIMIT 1`
        expect(rows).toHaveLength(1)
        expect(rows[0]).toMatchObject({registration_id: 2222, signed_prekey_id: 7, one_time_prekey_id: 1})
        expect(Buffer.from(rows[0].signed_prekey_signature).toString()).toBe('sig')
      },
      T,
    )

    it(
      'ConsumeOneTimePreKey (by user_id, device_id, key_id) marks it consumed by the peer, once; the bundle moves on at once',
      async () => {
        const consume = () =>
          hasuraUpdate(
            sql,
            alice,
            'nchat_one_time_prekeys',
            {device_id: 'bob-laptop', is_consumed: false, key_id: 1, user_id: bob.userId},
            {consumed_at: 'now()', consumed_by: alice.userId, is_consumed: true},
            ['id', 'key_id', 'consumed_at'],
          )
        const first = await consume()
        expect(first).toHaveLength(1)
        expect(first[0].consumed_at).toBeInstanceOf(Date)
        expect(await consume()).toHaveLength(0)
        const [b] = await sql`SELECT one_time_prekey_id FROM nchat_prekey_bundles WHERE device_id = 'bob-laptop'`
        expect(b.one_time_prekey_id).toBe(2)
        const [c] = await sql`SELECT * FROM nchat_claim_prekey_bundle('bob-laptop')`
        expect(c).toMatchObject({one_time_prekey_id: 2, registration_id: 2222})
      },
      T,
    )

    it(
      'SaveSignalSession upserts on nchat_signal_sessions_user_id_device_id_peer_user_id_peer_key; UpdateSessionMetadata; GetSignalSessions and GetSessionWithPeer read it',
      async () => {
        const save = (state: string, counter: number | null) =>
          hasuraInsert(
            sql,
            alice,
            'nchat_signal_sessions',
            [
              {
                chain_key_hash: bytes('ck'),
                device_id: 'alice-phone',
                is_initiator: true,
                peer_device_id: 'bob-laptop',
                peer_user_id: bob.userId,
                receive_counter: null,
                root_key_hash: bytes('rk'),
                send_counter: counter,
                session_state_encrypted: bytes(state),
              },
            ],
            {
              onConflict: {
                constraint: 'nchat_signal_sessions_user_id_device_id_peer_user_id_peer_key',
                updateColumns: ['session_state_encrypted', 'root_key_hash', 'chain_key_hash', 'send_counter', 'receive_counter'],
              },
              returning: ['id', 'created_at'],
            },
          )
        const [a] = await save('state-1', null)
        const [b] = await save('state-2', 4)
        expect(b.id).toBe(a.id)
        const sent = new Date('2026-02-01T10:00:00Z')
        const upd = await hasuraUpdate(
          sql,
          alice,
          'nchat_signal_sessions',
          {device_id: 'alice-phone', peer_device_id: 'bob-laptop', peer_user_id: bob.userId},
          {last_message_received_at: null, last_message_sent_at: sent, last_ratchet_at: sent, receive_counter: 1, send_counter: 5},
        )
        expect(upd).toHaveLength(1)
        const rows = await hasuraSelect(sql, alice, 'nchat_signal_sessions', {device_id: 'alice-phone', is_active: true}, [
          'id',
          'peer_user_id',
          'peer_device_id',
          'session_state_encrypted',
          'root_key_hash',
          'chain_key_hash',
          'send_counter',
          'receive_counter',
          'created_at',
          'last_message_sent_at',
          'last_message_received_at',
          'last_ratchet_at',
          'expires_at',
          'is_active',
          'is_initiator',
        ])
        expect(rows).toHaveLength(1)
        expect(rows[0]).toMatchObject({receive_counter: 1, send_counter: 5})
        // The guide's names: user_id from the session, last_message_at follows the newest message.
        const [g] = await sql`SELECT user_id, last_message_at FROM nchat_signal_sessions WHERE id = ${a.id as number}`
        expect(g.user_id).toBe(alice.userId)
        expect(g.last_message_at.toISOString()).toBe(sent.toISOString())
      },
      T,
    )

    it(
      'SaveSafetyNumber upserts on nchat_safety_numbers_user_id_peer_user_id_key; VerifySafetyNumber sets is_verified, verified_by_user_id',
      async () => {
        const save = (fp: string) =>
          hasuraInsert(
            sql,
            alice,
            'nchat_safety_numbers',
            [
              {
                is_verified: false,
                peer_identity_fingerprint: `peer-${fp}`,
                peer_user_id: bob.userId,
                safety_number: SAFETY,
                user_identity_fingerprint: `me-${fp}`,
              },
            ],
            {
              onConflict: {
                constraint: 'nchat_safety_numbers_user_id_peer_user_id_key',
                updateColumns: ['safety_number', 'user_identity_fingerprint', 'peer_identity_fingerprint', 'updated_at'],
              },
              returning: ['id', 'safety_number'],
            },
          )
        const [a] = await save('1')
        const [b] = await save('2')
        expect(b.id).toBe(a.id)
        const v = await hasuraUpdate(
          sql,
          alice,
          'nchat_safety_numbers',
          {peer_user_id: bob.userId},
          {is_verified: true, verified_at: 'now()', verified_by_user_id: alice.userId},
          ['id', 'is_verified', 'verified_at'],
        )
        expect(v[0]).toMatchObject({is_verified: true})
        const rows = await hasuraSelect(sql, alice, 'nchat_safety_numbers', {peer_user_id: bob.userId}, [
          'id',
          'peer_user_id',
          'safety_number',
          'is_verified',
          'verified_at',
          'verified_by_user_id',
          'user_identity_fingerprint',
          'peer_identity_fingerprint',
          'created_at',
          'updated_at',
        ])
        expect(rows[0]).toMatchObject({peer_identity_fingerprint: 'peer-2', verified_by_user_id: alice.userId})
      },
      T,
    )

    it(
      'LogE2EEAuditEvent writes event_data, ip_address, user_agent; GetE2EEAuditLog reads them; the guide reads metadata',
      async () => {
        const [row] = await hasuraInsert(
          sql,
          alice,
          'nchat_e2ee_audit_log',
          [{device_id: 'alice-phone', event_data: {keys: 3}, event_type: 'prekeys_replenished', ip_address: '192.0.2.7', user_agent: 'nchat-web'}],
          {returning: ['id', 'created_at']},
        )
        const log = await hasuraSelect(
          sql,
          alice,
          'nchat_e2ee_audit_log',
          {},
          ['id', 'event_type', 'event_data', 'ip_address', 'user_agent', 'created_at'],
          'created_at DESC',
        )
        expect(log[0]).toMatchObject({event_data: {keys: 3}, event_type: 'prekeys_replenished', ip_address: '192.0.2.7', user_agent: 'nchat-web'})
        const [g] = await sql`SELECT metadata, user_id FROM nchat_e2ee_audit_log WHERE id = ${row.id as number}`
        expect(g).toEqual({metadata: {keys: 3}, user_id: alice.userId})
      },
      T,
    )

    it(
      'an encrypted message carries is_encrypted, encrypted_payload, sender_device_id and encryption_version',
      async () => {
        const [ch] = await sql`SELECT id FROM nchat_channels ORDER BY created_at LIMIT 1`
        const [m] = await sql`INSERT INTO nchat_messages (channel_id, user_id, content, is_encrypted, encrypted_payload, sender_device_id, encryption_version)
                            VALUES (${ch.id}, ${alice.userId}, NULL, TRUE, ${bytes('ciphertext')}, 'alice-phone', 1)
                            RETURNING is_encrypted, encryption_version, sender_device_id`
        expect(m).toEqual({encryption_version: 1, is_encrypted: true, sender_device_id: 'alice-phone'})
      },
      T,
    )

    it(
      'RotateSignedPreKey and DeactivateDevice: a deactivated device offers no bundle',
      async () => {
        expect(await hasuraUpdate(sql, bob, 'nchat_signed_prekeys', {device_id: 'bob-laptop', is_active: true}, {is_active: false})).toHaveLength(1)
        await hasuraInsert(sql, bob, 'nchat_signed_prekeys', [
          {
            device_id: 'bob-laptop',
            expires_at: new Date(Date.now() + 86_400_000),
            is_active: true,
            key_id: 8,
            private_key_encrypted: bytes('p8'),
            public_key: bytes('k8'),
            signature: bytes('s8'),
          },
        ])
        expect((await sql`SELECT signed_prekey_id FROM nchat_prekey_bundles WHERE device_id = 'bob-laptop'`)[0].signed_prekey_id).toBe(8)
        expect(await hasuraUpdate(sql, bob, 'nchat_identity_keys', {device_id: 'bob-laptop'}, {is_active: false})).toHaveLength(1)
        expect(await sql`SELECT 1 FROM nchat_prekey_bundles WHERE device_id = 'bob-laptop'`).toHaveLength(0)
      },
      T,
    )

    it(
      'calls: InitiateCall (call with its participants, by the text call_id), UpdateCallStatus incl. declined, JoinCall on call_participants_call_user_unique, LeaveCall, EndCall with duration, GetCall',
      async () => {
        const callId = `call-${Date.now()}`
        const [ch] = await sql`SELECT id FROM nchat_channels ORDER BY created_at LIMIT 1`
        await sql.begin(async (tx) => {
          // Hasura's nested insert: the call, then its participants with call_id taken from the parent row.
          const [call] = await hasuraInsert(
            tx,
            alice,
            'nchat_calls',
            [{call_id: callId, caller_id: alice.userId, channel_id: ch.id, metadata: {sdp: 'offer'}, started_at: 'now()', status: 'initiating', type: 'video'}],
            {
              returning: [
                'id',
                'call_id',
                'type',
                'status',
                'started_at',
                'ended_at',
                'duration',
                'caller_id',
                'channel_id',
                'metadata',
                'created_at',
                'updated_at',
              ],
            },
          )
          expect(call).toMatchObject({call_id: callId, status: 'initiating', type: 'video'})
          await hasuraInsert(tx, alice, 'nchat_call_participants', [
            {call_id: call.call_id, is_muted: false, is_video_enabled: false, joined_at: 'now()', user_id: alice.userId},
            {call_id: call.call_id, is_muted: false, is_video_enabled: false, user_id: bob.userId},
          ])
        })
        for (const status of ['ringing', 'declined', 'connected']) {
          const r = await hasuraUpdate(sql, alice, 'nchat_calls', {call_id: callId}, {status, updated_at: 'now()'}, ['id', 'call_id', 'status'])
          expect(r[0]).toMatchObject({call_id: callId, status})
        }
        const join = () =>
          hasuraInsert(
            sql,
            bob,
            'nchat_call_participants',
            [{call_id: callId, is_muted: false, is_screen_sharing: false, is_video_enabled: false, joined_at: 'now()', user_id: bob.userId}],
            {
              onConflict: {constraint: 'call_participants_call_user_unique', updateColumns: ['joined_at', 'left_at']},
              returning: ['id', 'call_id', 'user_id', 'joined_at'],
            },
          )
        const [j1] = await join()
        const [j2] = await join()
        expect(j2.id).toBe(j1.id)
        expect(await hasuraUpdate(sql, bob, 'nchat_call_participants', {call_id: callId, user_id: bob.userId}, {is_muted: true})).toHaveLength(1)
        expect(
          await hasuraUpdate(sql, bob, 'nchat_call_participants', {call_id: callId, user_id: bob.userId}, {left_at: 'now()'}, ['id', 'user_id', 'left_at']),
        ).toHaveLength(1)
        const ended = await hasuraUpdate(
          sql,
          alice,
          'nchat_calls',
          {call_id: callId},
          {duration: 42, ended_at: 'now()', status: 'ended', updated_at: 'now()'},
          ['id', 'call_id', 'status', 'duration'],
        )
        expect(ended[0]).toMatchObject({duration: 42, status: 'ended'})
        // GetCall: the call by call_id, its participants through the relationship, each with its user.
        const rows = await sql`SELECT c.call_id, c.status, p.user_id, u.username
                               FROM nchat_calls c JOIN nchat_call_participants p ON p.call_id = c.call_id
                               JOIN nchat_users u ON u.id = p.user_id
                              WHERE c.call_id = ${callId} ORDER BY u.username`
        expect(rows.map((r) => r.username)).toEqual(['user1', 'user2'])
        await expect(hasuraUpdate(sql, alice, 'nchat_calls', {call_id: callId}, {status: 'paused'})).rejects.toThrow(/chk_calls_status/)
      },
      T,
    )

    it(
      'streams: CreateStream writes stream_key and ingest_url and the broadcaster reads them back; a viewer session, anonymous or not',
      async () => {
        const key = 'f'.repeat(64)
        const [ch] = await sql`SELECT id FROM nchat_channels ORDER BY created_at LIMIT 1`
        const [s] = await hasuraInsert(
          sql,
          alice,
          'nchat_streams',
          [
            {
              broadcaster_id: alice.userId,
              channel_id: ch.id,
              chat_mode: 'open',
              description: null,
              enable_chat: true,
              enable_qa: false,
              enable_reactions: true,
              ingest_url: `rtmp://ingest/live/${key}`,
              max_resolution: '1080p',
              scheduled_at: null,
              status: 'preparing',
              stream_key: key,
              tags: ['town-hall'],
              thumbnail_url: null,
              title: 'Town hall',
            },
          ],
          {returning: ['id', 'stream_key', 'ingest_url', 'status', 'tags', 'language']},
        )
        expect(s).toMatchObject({language: 'en', status: 'preparing', stream_key: key, tags: ['town-hall']})
        expect(await hasuraSelect(sql, alice, 'nchat_streams', {id: s.id}, ['stream_key'])).toEqual([{stream_key: key}])
        expect(await hasuraSelect(sql, bob, 'nchat_streams', {id: s.id}, ['stream_key'])).toEqual([])
        await hasuraInsert(sql, bob, 'nchat_stream_viewers', [{selected_quality: '720p', session_id: 'sess-1', stream_id: s.id}])
        await sql`INSERT INTO nchat_stream_viewers (stream_id, session_id) VALUES (${s.id as string}, 'anon-1')`
        const [{n}] = await sql`SELECT count(*)::int AS n FROM nchat_stream_viewers WHERE stream_id = ${s.id as string} AND left_at IS NULL`
        expect(n).toBe(2)
      },
      T,
    )

    it(
      'round trip: a row written through the guide names reads back through the application names, and the other way',
      async () => {
        await sql`INSERT INTO nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted) VALUES ('carol-1', ${await user(sql, 3)}, ${bytes('pub')}, ${bytes('priv')})`
        await sql`INSERT INTO nchat_signed_prekeys (device_id, signed_prekey_id, signed_prekey_public, signed_prekey_private_encrypted, signature) VALUES ('carol-1', 3, ${bytes('g-pub')}, ${bytes('g-priv')}, ${bytes('g-sig')})`
        const [sp] = await sql`SELECT user_id, key_id, public_key, private_key_encrypted FROM nchat_signed_prekeys WHERE device_id = 'carol-1'`
        expect(sp.user_id).toBe(await user(sql, 3))
        expect(sp.key_id).toBe(3)
        expect(Buffer.from(sp.public_key).toString()).toBe('g-pub')
        expect(Buffer.from(sp.private_key_encrypted).toString()).toBe('g-priv')
        await sql`INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, prekey_public, prekey_private_encrypted) VALUES ('carol-1', 9, ${bytes('o-pub')}, ${bytes('o-priv')})`
        const [otp] = await sql`SELECT key_id, public_key, private_key_encrypted, user_id FROM nchat_one_time_prekeys WHERE device_id = 'carol-1'`
        expect(otp.key_id).toBe(9)
        expect(Buffer.from(otp.public_key).toString()).toBe('o-pub')
        // Updates through either name move the twin.
        await sql`UPDATE nchat_one_time_prekeys SET public_key = ${bytes('o-pub-2')} WHERE device_id = 'carol-1'`
        expect(Buffer.from((await sql`SELECT prekey_public FROM nchat_one_time_prekeys WHERE device_id = 'carol-1'`)[0].prekey_public).toString()).toBe(
          'o-pub-2',
        )
        await sql`UPDATE nchat_one_time_prekeys SET prekey_id = 10 WHERE device_id = 'carol-1'`
        expect((await sql`SELECT key_id FROM nchat_one_time_prekeys WHERE device_id = 'carol-1'`)[0].key_id).toBe(10)
        // The master key through the guide's names, read through the application's.
        const carol = await user(sql, 3)
        await sql`INSERT INTO nchat_user_master_keys (user_id, master_key_salt, recovery_code_hash) VALUES (${carol}, ${bytes('g-salt')}, ${'cd'.repeat(32)})`
        const [mk] = await hasuraSelect(sql, {userId: carol}, 'nchat_user_master_keys', {}, ['salt', 'iterations', 'recovery_code_hash', 'algorithm'])
        expect(Buffer.from(mk.salt as Buffer).toString()).toBe('g-salt')
        expect(mk.iterations).toBe(100000)
        expect(Buffer.from(mk.recovery_code_hash as Buffer).toString('hex')).toBe('cd'.repeat(32))
        await sql`UPDATE nchat_user_master_keys SET recovery_code_hash_bytes = ${Buffer.from('ef'.repeat(32), 'hex')} WHERE user_id = ${carol}`
        expect((await sql`SELECT recovery_code_hash FROM nchat_user_master_keys WHERE user_id = ${carol}`)[0].recovery_code_hash).toBe('ef'.repeat(32))
        await sql`INSERT INTO nchat_e2ee_audit_log (event_type, metadata) VALUES ('session_established', '{"g": 1}')`
        expect((await sql`SELECT event_data FROM nchat_e2ee_audit_log WHERE metadata = '{"g": 1}'`)[0].event_data).toEqual({g: 1})
      },
      T,
    )

    it(
      "the guide rules hold for rows written through the application names: NOT NULL, CHECKs, twins that disagree, another user's device",
      async () => {
        const dave = {userId: await user(sql, 4)}
        await expect(hasuraInsert(sql, dave, 'nchat_user_master_keys', [{iterations: 1000, key_hash: bytes('k')}])).rejects.toThrow(
          /master_key_salt|recovery_code_hash/,
        )
        await expect(hasuraInsert(sql, dave, 'nchat_safety_numbers', [{peer_user_id: alice.userId, safety_number: '123'}])).rejects.toThrow(
          /nchat_safety_numbers_safety_number_check/,
        )
        await expect(hasuraInsert(sql, dave, 'nchat_e2ee_audit_log', [{event_data: {}, event_type: 'telepathy'}])).rejects.toThrow(
          /nchat_e2ee_audit_log_event_type_check/,
        )
        await expect(
          hasuraInsert(sql, dave, 'nchat_signed_prekeys', [
            {device_id: 'alice-phone', expires_at: new Date(), key_id: 1, private_key_encrypted: bytes('x'), public_key: bytes('x'), signature: bytes('x')},
          ]),
        ).rejects.toThrow(/belongs to another user/)
        await expect(
          hasuraInsert(sql, dave, 'nchat_one_time_prekeys', [{device_id: 'alice-phone', key_id: 50, private_key_encrypted: bytes('x')}]),
        ).rejects.toThrow(/another user|prekey_public/)
        await expect(
          sql`INSERT INTO nchat_one_time_prekeys (device_id, prekey_id, key_id, prekey_public, prekey_private_encrypted) VALUES ('alice-phone', 60, 61, ${bytes('p')}, ${bytes('q')})`,
        ).rejects.toThrow(/chk_one_time_prekeys_key_id_twin/)
        await expect(
          sql`INSERT INTO nchat_safety_numbers (user_id, peer_user_id, safety_number, verification_method) VALUES (${dave.userId}, ${bob.userId}, ${SAFETY}, 'telepathy')`,
        ).rejects.toThrow(/verification_method_check/)
      },
      T,
    )
  })
}
