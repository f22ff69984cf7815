-- 014_e2ee_system.down.sql
--
-- Removes what 014 added (D6): the claim function, the view, the two extra indexes, the foreign
-- key, the guide indexes and columns on nchat_messages and nchat_channels, and the applications
-- names on the seven E2EE tables (twin columns, their trigger and CHECKs, the named constraints,
-- the row-level security and updated_at triggers 014 adopted from the database conventions). The seven E2EE tables
-- are dropped only when 013 is not applied: when it is, they belong to 013 and 013 down drops them.
-- Fully transactional and idempotent. The engine removes the ledger rows.

DROP FUNCTION IF EXISTS nchat_claim_prekey_bundle(TEXT);
DROP VIEW IF EXISTS nchat_prekey_bundles;

-- The application names on the seven tables. When 013 is not applied the tables go below anyway,
-- when it is, they are given back in 013s shape. Guarded: 013 down may already have run.
DO $$
DECLARE
    v_t text;
    v_p record;
BEGIN
    FOREACH v_t IN ARRAY ARRAY['nchat_user_master_keys', 'nchat_identity_keys', 'nchat_signed_prekeys',
                               'nchat_one_time_prekeys', 'nchat_signal_sessions', 'nchat_safety_numbers',
                               'nchat_e2ee_audit_log'] LOOP
        CONTINUE WHEN to_regclass(quote_ident(v_t)) IS NULL;
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', v_t || '_sync_names', v_t);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', 'update_' || v_t || '_updated_at', v_t);
        FOR v_p IN SELECT pol.polname FROM pg_policy pol WHERE pol.polrelid = to_regclass(quote_ident(v_t)) LOOP
            EXECUTE format('DROP POLICY %I ON %I', v_p.polname, v_t);
        END LOOP;
        EXECUTE format('ALTER TABLE %I DISABLE ROW LEVEL SECURITY', v_t);
    END LOOP;

    IF to_regclass('nchat_user_master_keys') IS NOT NULL THEN
        ALTER TABLE nchat_user_master_keys
            DROP CONSTRAINT IF EXISTS chk_user_master_keys_recovery_code_hash_twin,
            DROP CONSTRAINT IF EXISTS chk_user_master_keys_iterations_twin,
            DROP CONSTRAINT IF EXISTS chk_user_master_keys_salt_twin,
            DROP CONSTRAINT IF EXISTS nchat_user_master_keys_user_id_key,
            DROP COLUMN IF EXISTS id,
            DROP COLUMN IF EXISTS salt,
            DROP COLUMN IF EXISTS key_hash,
            DROP COLUMN IF EXISTS iterations,
            DROP COLUMN IF EXISTS algorithm,
            DROP COLUMN IF EXISTS master_key_backup_encrypted,
            DROP COLUMN IF EXISTS recovery_code_hash_bytes,
            DROP COLUMN IF EXISTS last_used_at;
    END IF;
    IF to_regclass('nchat_identity_keys') IS NOT NULL THEN
        ALTER TABLE nchat_identity_keys
            DROP COLUMN IF EXISTS id,
            DROP COLUMN IF EXISTS registration_id,
            DROP COLUMN IF EXISTS is_active,
            DROP COLUMN IF EXISTS last_used_at;
    END IF;
    IF to_regclass('nchat_signed_prekeys') IS NOT NULL THEN
        ALTER TABLE nchat_signed_prekeys
            DROP CONSTRAINT IF EXISTS nchat_signed_prekeys_user_id_device_id_key_id_key,
            DROP CONSTRAINT IF EXISTS fk_signed_prekeys_user,
            DROP CONSTRAINT IF EXISTS chk_signed_prekeys_key_id_twin,
            DROP CONSTRAINT IF EXISTS chk_signed_prekeys_public_key_twin,
            DROP CONSTRAINT IF EXISTS chk_signed_prekeys_private_key_twin,
            DROP COLUMN IF EXISTS user_id,
            DROP COLUMN IF EXISTS key_id,
            DROP COLUMN IF EXISTS public_key,
            DROP COLUMN IF EXISTS private_key_encrypted,
            DROP COLUMN IF EXISTS expires_at;
    END IF;
    IF to_regclass('nchat_one_time_prekeys') IS NOT NULL THEN
        DROP INDEX IF EXISTS idx_one_time_prekeys_consumed_by;
        ALTER TABLE nchat_one_time_prekeys
            DROP CONSTRAINT IF EXISTS nchat_one_time_prekeys_user_id_device_id_key_id_key,
            DROP CONSTRAINT IF EXISTS fk_one_time_prekeys_user,
            DROP CONSTRAINT IF EXISTS fk_one_time_prekeys_consumed_by,
            DROP CONSTRAINT IF EXISTS chk_one_time_prekeys_key_id_twin,
            DROP CONSTRAINT IF EXISTS chk_one_time_prekeys_public_key_twin,
            DROP CONSTRAINT IF EXISTS chk_one_time_prekeys_private_key_twin,
            DROP COLUMN IF EXISTS user_id,
            DROP COLUMN IF EXISTS key_id,
            DROP COLUMN IF EXISTS public_key,
            DROP COLUMN IF EXISTS private_key_encrypted,
            DROP COLUMN IF EXISTS consumed_by;
    END IF;
    IF to_regclass('nchat_signal_sessions') IS NOT NULL THEN
        ALTER TABLE nchat_signal_sessions
            DROP CONSTRAINT IF EXISTS nchat_signal_sessions_user_id_device_id_peer_user_id_peer_key,
            DROP CONSTRAINT IF EXISTS fk_signal_sessions_user,
            DROP CONSTRAINT IF EXISTS chk_signal_sessions_counters,
            DROP COLUMN IF EXISTS user_id,
            DROP COLUMN IF EXISTS root_key_hash,
            DROP COLUMN IF EXISTS chain_key_hash,
            DROP COLUMN IF EXISTS send_counter,
            DROP COLUMN IF EXISTS receive_counter,
            DROP COLUMN IF EXISTS last_message_sent_at,
            DROP COLUMN IF EXISTS last_message_received_at,
            DROP COLUMN IF EXISTS last_ratchet_at,
            DROP COLUMN IF EXISTS expires_at;
    END IF;
    IF to_regclass('nchat_safety_numbers') IS NOT NULL THEN
        DROP INDEX IF EXISTS idx_safety_numbers_verified_by;
        ALTER TABLE nchat_safety_numbers
            DROP CONSTRAINT IF EXISTS fk_safety_numbers_verified_by,
            DROP COLUMN IF EXISTS user_identity_fingerprint,
            DROP COLUMN IF EXISTS peer_identity_fingerprint,
            DROP COLUMN IF EXISTS is_verified,
            DROP COLUMN IF EXISTS verified_by_user_id;
    END IF;
    IF to_regclass('nchat_e2ee_audit_log') IS NOT NULL THEN
        ALTER TABLE nchat_e2ee_audit_log
            DROP CONSTRAINT IF EXISTS chk_e2ee_audit_log_event_data_twin,
            DROP COLUMN IF EXISTS event_data,
            DROP COLUMN IF EXISTS ip_address,
            DROP COLUMN IF EXISTS user_agent;
    END IF;
END
$$;

DROP FUNCTION IF EXISTS nchat_user_master_keys_sync_names();
DROP FUNCTION IF EXISTS nchat_signed_prekeys_sync_names();
DROP FUNCTION IF EXISTS nchat_one_time_prekeys_sync_names();
DROP FUNCTION IF EXISTS nchat_signal_sessions_sync_names();
DROP FUNCTION IF EXISTS nchat_e2ee_audit_log_sync_names();
DROP FUNCTION IF EXISTS nchat_recovery_hash_bytes(TEXT);

DROP INDEX IF EXISTS idx_signed_prekeys_newest;
DROP INDEX IF EXISTS idx_one_time_prekeys_next;

ALTER TABLE nchat_messages DROP CONSTRAINT IF EXISTS fk_messages_sender_device;

DROP INDEX IF EXISTS idx_messages_encrypted;
DROP INDEX IF EXISTS idx_messages_sender_device;
DROP INDEX IF EXISTS idx_channels_enforce_encryption;

ALTER TABLE nchat_messages
    DROP COLUMN IF EXISTS is_encrypted,
    DROP COLUMN IF EXISTS encrypted_payload,
    DROP COLUMN IF EXISTS sender_device_id,
    DROP COLUMN IF EXISTS encryption_version;

ALTER TABLE nchat_channels
    DROP COLUMN IF EXISTS enforce_encryption;

-- The engine publishes the applied versions as a comma-separated list in the setting
-- nself_e2ee.applied_versions, like 13,14,15 (unset or empty means none applied).
-- Spaces and leading zeros in the list are tolerated.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
          FROM unnest(string_to_array(coalesce(current_setting('nself_e2ee.applied_versions', true), ''), ',')) AS v(version)
         WHERE btrim(v.version) ~ '^[0-9]+$'
           AND btrim(v.version)::integer = 13
    ) THEN
        DROP TABLE IF EXISTS nchat_e2ee_audit_log;
        DROP TABLE IF EXISTS nchat_safety_numbers;
        DROP TABLE IF EXISTS nchat_signal_sessions;
        DROP TABLE IF EXISTS nchat_one_time_prekeys;
        DROP TABLE IF EXISTS nchat_signed_prekeys;
        DROP TABLE IF EXISTS nchat_identity_keys;
        DROP TABLE IF EXISTS nchat_user_master_keys;
    END IF;
END
$$;
