-- 014_e2ee_system.down.sql
--
-- Removes what 014 added (D6): the claim function, the view, the two extra indexes, the foreign
-- key, the guide indexes and columns on nchat_messages and nchat_channels. The seven E2EE tables
-- are dropped only when 013 is not applied: when it is, they belong to 013 and 013 down drops them.
-- Fully transactional and idempotent. The engine removes the ledger rows.

DROP FUNCTION IF EXISTS nchat_claim_prekey_bundle(TEXT);
DROP VIEW IF EXISTS nchat_prekey_bundles;

DROP INDEX IF EXISTS idx_signed_prekeys_newest;
DROP INDEX IF EXISTS idx_one_time_prekeys_next;

ALTER TABLE nchat_messages DROP CONSTRAINT IF EXISTS fk_messages_sender_device;

DROP INDEX IF EXISTS idx_messages_encrypted;
DROP INDEX IF EXISTS idx_messages_sender_device;
DROP INDEX IF EXISTS idx_channels_enforce_encryption;

ALTER TABLE nchat_messages
    DROP COLUMN IF EXISTS is_encrypted,
    DROP COLUMN IF EXISTS encrypted_payload,
    DROP COLUMN IF EXISTS sender_device_id;

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
