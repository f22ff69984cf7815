-- 014_e2ee_system.sql  (final E2EE infrastructure)
--
-- Everything the nChat v0.4.0 migration guide creates, names unchanged, with defects D1 to D5 fixed.
-- Correct on a v0.3.0 database, on top of 013, on a half-applied 014, and on a database where an
-- operator already ran the guide SQL by hand (that state is converted, see part 2).
--
-- Layout (the engine relies on it):
--   part 1-4  transactional, run in one transaction by the engine
--             part 4 touches nchat_channels and nchat_messages and comes last, so their
--             ACCESS EXCLUSIVE lock is held only for the last moments before commit (D5)
--   part 5    the non-transactional tail, each statement run alone after the commit (D3, D4)

-- ---------------------------------------------------------------------------------------------
-- Part 1. The seven E2EE tables and the guide indexes on them (same text as 013).
-- New, empty tables: plain CREATE INDEX inside the transaction is fine here.
-- ---------------------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS nchat_user_master_keys (
    user_id UUID PRIMARY KEY REFERENCES nchat_users(id) ON DELETE CASCADE,
    master_key_salt BYTEA NOT NULL,  -- 32 bytes
    pbkdf2_iterations INTEGER NOT NULL DEFAULT 100000,
    recovery_code_hash TEXT NOT NULL,  -- SHA-256 hash of recovery code
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_user_master_keys_user_id ON nchat_user_master_keys(user_id);

CREATE TABLE IF NOT EXISTS nchat_identity_keys (
    device_id TEXT PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES nchat_users(id) ON DELETE CASCADE,
    identity_key_public BYTEA NOT NULL,  -- 32 bytes (Curve25519)
    identity_key_private_encrypted BYTEA NOT NULL,  -- about 80 bytes (AES-256-GCM encrypted)
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    UNIQUE(user_id, device_id)
);

CREATE INDEX IF NOT EXISTS idx_identity_keys_user_id ON nchat_identity_keys(user_id);
CREATE INDEX IF NOT EXISTS idx_identity_keys_device_id ON nchat_identity_keys(device_id);

CREATE TABLE IF NOT EXISTS nchat_signed_prekeys (
    id SERIAL PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES nchat_identity_keys(device_id) ON DELETE CASCADE,
    signed_prekey_id INTEGER NOT NULL,
    signed_prekey_public BYTEA NOT NULL,  -- 32 bytes
    signed_prekey_private_encrypted BYTEA NOT NULL,  -- about 80 bytes
    signature BYTEA NOT NULL,  -- 64 bytes (Ed25519)
    rotation_date TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    UNIQUE(device_id, signed_prekey_id)
);

CREATE INDEX IF NOT EXISTS idx_signed_prekeys_device_id ON nchat_signed_prekeys(device_id);
CREATE INDEX IF NOT EXISTS idx_signed_prekeys_active ON nchat_signed_prekeys(device_id, is_active);
CREATE INDEX IF NOT EXISTS idx_signed_prekeys_rotation ON nchat_signed_prekeys(rotation_date)
    WHERE is_active = TRUE;

CREATE TABLE IF NOT EXISTS nchat_one_time_prekeys (
    id SERIAL PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES nchat_identity_keys(device_id) ON DELETE CASCADE,
    prekey_id INTEGER NOT NULL,
    prekey_public BYTEA NOT NULL,  -- 32 bytes
    prekey_private_encrypted BYTEA NOT NULL,  -- about 80 bytes
    is_consumed BOOLEAN NOT NULL DEFAULT FALSE,
    consumed_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    UNIQUE(device_id, prekey_id)
);

CREATE INDEX IF NOT EXISTS idx_one_time_prekeys_device_id ON nchat_one_time_prekeys(device_id);
CREATE INDEX IF NOT EXISTS idx_one_time_prekeys_available ON nchat_one_time_prekeys(device_id, is_consumed)
    WHERE is_consumed = FALSE;
CREATE INDEX IF NOT EXISTS idx_one_time_prekeys_consumed ON nchat_one_time_prekeys(consumed_at)
    WHERE is_consumed = TRUE;

CREATE TABLE IF NOT EXISTS nchat_signal_sessions (
    id SERIAL PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES nchat_identity_keys(device_id) ON DELETE CASCADE,
    peer_user_id UUID NOT NULL REFERENCES nchat_users(id) ON DELETE CASCADE,
    peer_device_id TEXT NOT NULL,
    session_state_encrypted BYTEA NOT NULL,  -- Encrypted Double Ratchet state (about 500 bytes)
    is_initiator BOOLEAN NOT NULL,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    last_message_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    UNIQUE(device_id, peer_user_id, peer_device_id)
);

CREATE INDEX IF NOT EXISTS idx_signal_sessions_device_id ON nchat_signal_sessions(device_id);
CREATE INDEX IF NOT EXISTS idx_signal_sessions_peer ON nchat_signal_sessions(peer_user_id, peer_device_id);
CREATE INDEX IF NOT EXISTS idx_signal_sessions_active ON nchat_signal_sessions(device_id, is_active);
CREATE INDEX IF NOT EXISTS idx_signal_sessions_last_message ON nchat_signal_sessions(last_message_at)
    WHERE is_active = TRUE;

CREATE TABLE IF NOT EXISTS nchat_safety_numbers (
    id SERIAL PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES nchat_users(id) ON DELETE CASCADE,
    peer_user_id UUID NOT NULL REFERENCES nchat_users(id) ON DELETE CASCADE,
    safety_number TEXT NOT NULL,  -- 60 digits
    verified_at TIMESTAMP WITH TIME ZONE,
    verification_method TEXT,  -- manual, qr_code, out_of_band
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    UNIQUE(user_id, peer_user_id),
    CHECK (LENGTH(safety_number) = 60),
    -- D1: the guide wrote IN (..., NULL), which lets any value through. NULL is allowed explicitly.
    CHECK (verification_method IS NULL OR verification_method IN ('manual', 'qr_code', 'out_of_band'))
);

CREATE INDEX IF NOT EXISTS idx_safety_numbers_user_id ON nchat_safety_numbers(user_id);
CREATE INDEX IF NOT EXISTS idx_safety_numbers_peer_user_id ON nchat_safety_numbers(peer_user_id);
CREATE INDEX IF NOT EXISTS idx_safety_numbers_verified ON nchat_safety_numbers(user_id, verified_at)
    WHERE verified_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS nchat_e2ee_audit_log (
    id SERIAL PRIMARY KEY,
    event_type TEXT NOT NULL,  -- master_key_created, device_keys_generated, and so on
    user_id UUID REFERENCES nchat_users(id) ON DELETE SET NULL,
    device_id TEXT,
    metadata JSONB,  -- Additional event metadata (no sensitive data)
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CHECK (event_type IN (
        'master_key_created',
        'device_keys_generated',
        'session_established',
        'session_destroyed',
        'signed_prekey_rotated',
        'prekeys_replenished',
        'safety_number_verified',
        'safety_number_changed',
        'recovery_code_used'
    ))
);

CREATE INDEX IF NOT EXISTS idx_e2ee_audit_log_user_id ON nchat_e2ee_audit_log(user_id);
CREATE INDEX IF NOT EXISTS idx_e2ee_audit_log_device_id ON nchat_e2ee_audit_log(device_id);
CREATE INDEX IF NOT EXISTS idx_e2ee_audit_log_event_type ON nchat_e2ee_audit_log(event_type);
CREATE INDEX IF NOT EXISTS idx_e2ee_audit_log_created_at ON nchat_e2ee_audit_log(created_at DESC);

-- ---------------------------------------------------------------------------------------------
-- Part 2. Convert a database where the guide SQL was run by hand.
-- D2: the guide materialized view is refreshed by three statement triggers on every write to
-- the key tables. Remove triggers, refresh function and materialized view. The name
-- nchat_prekey_bundles comes back below as a plain view with the same columns.
-- ---------------------------------------------------------------------------------------------

DROP TRIGGER IF EXISTS refresh_prekey_bundles_on_identity_key ON nchat_identity_keys;
DROP TRIGGER IF EXISTS refresh_prekey_bundles_on_signed_prekey ON nchat_signed_prekeys;
DROP TRIGGER IF EXISTS refresh_prekey_bundles_on_one_time_prekey ON nchat_one_time_prekeys;
DROP FUNCTION IF EXISTS refresh_prekey_bundles();

DO $$
BEGIN
    -- Only a materialized view is dropped here. Its two indexes go with it.
    IF EXISTS (
        SELECT 1
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema()
           AND c.relname = 'nchat_prekey_bundles'
           AND c.relkind = 'm'
    ) THEN
        DROP MATERIALIZED VIEW nchat_prekey_bundles;
    END IF;
END
$$;

-- D1: the guide check is written IN (..., NULL) and accepts any value. Replace every such check
-- on verification_method by the correct one under the same name. A correct check always
-- contains IS NULL in its definition, a buggy one never does.
DO $$
DECLARE
    v_con record;
    v_bad bigint;
BEGIN
    FOR v_con IN
        SELECT con.conname
          FROM pg_constraint con
         WHERE con.conrelid = 'nchat_safety_numbers'::regclass
           AND con.contype = 'c'
           AND pg_get_constraintdef(con.oid) LIKE '%verification_method%'
           AND pg_get_constraintdef(con.oid) NOT LIKE '%IS NULL%'
    LOOP
        SELECT count(*) INTO v_bad
          FROM nchat_safety_numbers s
         WHERE s.verification_method IS NOT NULL
           AND s.verification_method NOT IN ('manual', 'qr_code', 'out_of_band');
        IF v_bad > 0 THEN
            RAISE EXCEPTION 'nchat_safety_numbers has % row(s) with an invalid verification_method', v_bad
                USING HINT = 'The guide check (defect D1) let them in. Set them to NULL or to manual, qr_code or out_of_band, then run the migration again.';
        END IF;
        EXECUTE format('ALTER TABLE nchat_safety_numbers DROP CONSTRAINT %I', v_con.conname);
        EXECUTE format(
            'ALTER TABLE nchat_safety_numbers ADD CONSTRAINT %I CHECK (verification_method IS NULL OR verification_method IN (%L, %L, %L))',
            v_con.conname, 'manual', 'qr_code', 'out_of_band');
    END LOOP;

    -- A hand-made table with no check on verification_method at all gets the guide-named one.
    IF NOT EXISTS (
        SELECT 1
          FROM pg_constraint con
         WHERE con.conrelid = 'nchat_safety_numbers'::regclass
           AND con.contype = 'c'
           AND pg_get_constraintdef(con.oid) LIKE '%verification_method%'
    ) THEN
        ALTER TABLE nchat_safety_numbers
            ADD CONSTRAINT nchat_safety_numbers_verification_method_check
            CHECK (verification_method IS NULL OR verification_method IN ('manual', 'qr_code', 'out_of_band'));
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Part 2b. The names nChat application uses beside the guide (NCHAT-APP.md, docs/deviations.md
-- Application names). The guide columns stay as they are. Where the application names the same
-- datum differently, the second name is a twin column: a BEFORE INSERT OR UPDATE trigger copies
-- whichever of the two was written into the other, and a CHECK keeps them equal, so the guides
-- NOT NULL and CHECK rules hold for rows written through either name. user_id on the key tables is
-- filled from the owner of device_id when the writer leaves it out, and must match it otherwise.
-- The tables are new (or 013s, still small): adding columns and constraints here costs nothing.
-- ---------------------------------------------------------------------------------------------

ALTER TABLE nchat_user_master_keys
    ADD COLUMN IF NOT EXISTS id UUID NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN IF NOT EXISTS salt BYTEA,
    ADD COLUMN IF NOT EXISTS key_hash BYTEA,
    ADD COLUMN IF NOT EXISTS iterations INTEGER,
    ADD COLUMN IF NOT EXISTS algorithm TEXT NOT NULL DEFAULT 'PBKDF2-SHA256',
    ADD COLUMN IF NOT EXISTS master_key_backup_encrypted BYTEA,
    ADD COLUMN IF NOT EXISTS recovery_code_hash_bytes BYTEA,
    ADD COLUMN IF NOT EXISTS last_used_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE nchat_identity_keys
    ADD COLUMN IF NOT EXISTS id UUID NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN IF NOT EXISTS registration_id INTEGER,
    ADD COLUMN IF NOT EXISTS is_active BOOLEAN NOT NULL DEFAULT TRUE,
    ADD COLUMN IF NOT EXISTS last_used_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE nchat_signed_prekeys
    ADD COLUMN IF NOT EXISTS user_id UUID,
    ADD COLUMN IF NOT EXISTS key_id INTEGER,
    ADD COLUMN IF NOT EXISTS public_key BYTEA,
    ADD COLUMN IF NOT EXISTS private_key_encrypted BYTEA,
    ADD COLUMN IF NOT EXISTS expires_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE nchat_one_time_prekeys
    ADD COLUMN IF NOT EXISTS user_id UUID,
    ADD COLUMN IF NOT EXISTS key_id INTEGER,
    ADD COLUMN IF NOT EXISTS public_key BYTEA,
    ADD COLUMN IF NOT EXISTS private_key_encrypted BYTEA,
    ADD COLUMN IF NOT EXISTS consumed_by UUID;

ALTER TABLE nchat_signal_sessions
    ADD COLUMN IF NOT EXISTS user_id UUID,
    ADD COLUMN IF NOT EXISTS root_key_hash BYTEA,
    ADD COLUMN IF NOT EXISTS chain_key_hash BYTEA,
    ADD COLUMN IF NOT EXISTS send_counter INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS receive_counter INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_message_sent_at TIMESTAMP WITH TIME ZONE,
    ADD COLUMN IF NOT EXISTS last_message_received_at TIMESTAMP WITH TIME ZONE,
    ADD COLUMN IF NOT EXISTS last_ratchet_at TIMESTAMP WITH TIME ZONE,
    ADD COLUMN IF NOT EXISTS expires_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE nchat_safety_numbers
    ADD COLUMN IF NOT EXISTS user_identity_fingerprint TEXT,
    ADD COLUMN IF NOT EXISTS peer_identity_fingerprint TEXT,
    ADD COLUMN IF NOT EXISTS is_verified BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN IF NOT EXISTS verified_by_user_id UUID;

ALTER TABLE nchat_e2ee_audit_log
    ADD COLUMN IF NOT EXISTS event_data JSONB,
    ADD COLUMN IF NOT EXISTS ip_address INET,
    ADD COLUMN IF NOT EXISTS user_agent TEXT;

-- The recovery code hash: the guide stores TEXT, the application sends BYTEA. Hex text is the
-- canonical form (a SHA-256 hash written as text), any other text keeps its UTF-8 bytes.
CREATE OR REPLACE FUNCTION nchat_recovery_hash_bytes(p_text TEXT)
RETURNS BYTEA
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
    SELECT CASE
        WHEN p_text IS NULL THEN NULL
        WHEN p_text ~ '^([0-9A-Fa-f]{2})*$' THEN decode(p_text, 'hex')
        ELSE convert_to(p_text, 'UTF8')
    END
$$;

-- One trigger function a table keeps its twins in step. INSERT: a column left NULL takes its twin
-- value. UPDATE: the column that changed gives its value to the twin that did not. The CHECKs below
-- reject a row whose twins still differ. pbkdf2_iterations has a default, so on INSERT a non-NULL
-- iterations wins over that default. Plain assignments to NEW, no dynamic SQL: a few microseconds a row.
CREATE OR REPLACE FUNCTION nchat_user_master_keys_sync_names()
RETURNS TRIGGER
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.master_key_salt IS NULL THEN
            NEW.master_key_salt := NEW.salt;
        ELSIF NEW.salt IS NULL THEN
            NEW.salt := NEW.master_key_salt;
        END IF;
    ELSIF NEW.master_key_salt IS DISTINCT FROM OLD.master_key_salt AND NEW.salt IS NOT DISTINCT FROM OLD.salt THEN
        NEW.salt := NEW.master_key_salt;
    ELSIF NEW.salt IS DISTINCT FROM OLD.salt AND NEW.master_key_salt IS NOT DISTINCT FROM OLD.master_key_salt THEN
        NEW.master_key_salt := NEW.salt;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.pbkdf2_iterations IS NULL OR (NEW.pbkdf2_iterations = 100000 AND NEW.iterations IS NOT NULL) THEN
            NEW.pbkdf2_iterations := NEW.iterations;
        ELSIF NEW.iterations IS NULL THEN
            NEW.iterations := NEW.pbkdf2_iterations;
        END IF;
    ELSIF NEW.pbkdf2_iterations IS DISTINCT FROM OLD.pbkdf2_iterations AND NEW.iterations IS NOT DISTINCT FROM OLD.iterations THEN
        NEW.iterations := NEW.pbkdf2_iterations;
    ELSIF NEW.iterations IS DISTINCT FROM OLD.iterations AND NEW.pbkdf2_iterations IS NOT DISTINCT FROM OLD.pbkdf2_iterations THEN
        NEW.pbkdf2_iterations := NEW.iterations;
    END IF;
    -- recovery_code_hash (TEXT) and recovery_code_hash_bytes (BYTEA) are one datum in two types.
    IF (TG_OP = 'INSERT' AND NEW.recovery_code_hash_bytes IS NOT NULL AND NEW.recovery_code_hash IS NULL)
       OR (TG_OP = 'UPDATE' AND NEW.recovery_code_hash_bytes IS DISTINCT FROM OLD.recovery_code_hash_bytes
           AND NEW.recovery_code_hash IS NOT DISTINCT FROM OLD.recovery_code_hash) THEN
        NEW.recovery_code_hash := encode(NEW.recovery_code_hash_bytes, 'hex');
    ELSIF (TG_OP = 'INSERT' AND NEW.recovery_code_hash IS NOT NULL AND NEW.recovery_code_hash_bytes IS NULL)
       OR (TG_OP = 'UPDATE' AND NEW.recovery_code_hash IS DISTINCT FROM OLD.recovery_code_hash
           AND NEW.recovery_code_hash_bytes IS NOT DISTINCT FROM OLD.recovery_code_hash_bytes) THEN
        NEW.recovery_code_hash_bytes := nchat_recovery_hash_bytes(NEW.recovery_code_hash);
    END IF;
    NEW.algorithm := COALESCE(NEW.algorithm, 'PBKDF2-SHA256');
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION nchat_signed_prekeys_sync_names()
RETURNS TRIGGER
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_owner UUID;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.signed_prekey_id IS NULL THEN
            NEW.signed_prekey_id := NEW.key_id;
        ELSIF NEW.key_id IS NULL THEN
            NEW.key_id := NEW.signed_prekey_id;
        END IF;
    ELSIF NEW.signed_prekey_id IS DISTINCT FROM OLD.signed_prekey_id AND NEW.key_id IS NOT DISTINCT FROM OLD.key_id THEN
        NEW.key_id := NEW.signed_prekey_id;
    ELSIF NEW.key_id IS DISTINCT FROM OLD.key_id AND NEW.signed_prekey_id IS NOT DISTINCT FROM OLD.signed_prekey_id THEN
        NEW.signed_prekey_id := NEW.key_id;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.signed_prekey_public IS NULL THEN
            NEW.signed_prekey_public := NEW.public_key;
        ELSIF NEW.public_key IS NULL THEN
            NEW.public_key := NEW.signed_prekey_public;
        END IF;
    ELSIF NEW.signed_prekey_public IS DISTINCT FROM OLD.signed_prekey_public AND NEW.public_key IS NOT DISTINCT FROM OLD.public_key THEN
        NEW.public_key := NEW.signed_prekey_public;
    ELSIF NEW.public_key IS DISTINCT FROM OLD.public_key AND NEW.signed_prekey_public IS NOT DISTINCT FROM OLD.signed_prekey_public THEN
        NEW.signed_prekey_public := NEW.public_key;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.signed_prekey_private_encrypted IS NULL THEN
            NEW.signed_prekey_private_encrypted := NEW.private_key_encrypted;
        ELSIF NEW.private_key_encrypted IS NULL THEN
            NEW.private_key_encrypted := NEW.signed_prekey_private_encrypted;
        END IF;
    ELSIF NEW.signed_prekey_private_encrypted IS DISTINCT FROM OLD.signed_prekey_private_encrypted AND NEW.private_key_encrypted IS NOT DISTINCT FROM OLD.private_key_encrypted THEN
        NEW.private_key_encrypted := NEW.signed_prekey_private_encrypted;
    ELSIF NEW.private_key_encrypted IS DISTINCT FROM OLD.private_key_encrypted AND NEW.signed_prekey_private_encrypted IS NOT DISTINCT FROM OLD.signed_prekey_private_encrypted THEN
        NEW.signed_prekey_private_encrypted := NEW.private_key_encrypted;
    END IF;
    -- One primary-key probe per row: key upload stays flat in the number of devices.
    IF TG_OP = 'INSERT' OR NEW.device_id IS DISTINCT FROM OLD.device_id OR NEW.user_id IS DISTINCT FROM OLD.user_id THEN
        SELECT k.user_id INTO v_owner FROM nchat_identity_keys k WHERE k.device_id = NEW.device_id;
        IF v_owner IS NOT NULL THEN
            IF NEW.user_id IS NULL THEN
                NEW.user_id := v_owner;
            ELSIF NEW.user_id <> v_owner THEN
                RAISE EXCEPTION 'device % belongs to another user than %', NEW.device_id, NEW.user_id
                    USING ERRCODE = '23514', TABLE = TG_TABLE_NAME, COLUMN = 'user_id';
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION nchat_one_time_prekeys_sync_names()
RETURNS TRIGGER
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_owner UUID;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.prekey_id IS NULL THEN
            NEW.prekey_id := NEW.key_id;
        ELSIF NEW.key_id IS NULL THEN
            NEW.key_id := NEW.prekey_id;
        END IF;
    ELSIF NEW.prekey_id IS DISTINCT FROM OLD.prekey_id AND NEW.key_id IS NOT DISTINCT FROM OLD.key_id THEN
        NEW.key_id := NEW.prekey_id;
    ELSIF NEW.key_id IS DISTINCT FROM OLD.key_id AND NEW.prekey_id IS NOT DISTINCT FROM OLD.prekey_id THEN
        NEW.prekey_id := NEW.key_id;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.prekey_public IS NULL THEN
            NEW.prekey_public := NEW.public_key;
        ELSIF NEW.public_key IS NULL THEN
            NEW.public_key := NEW.prekey_public;
        END IF;
    ELSIF NEW.prekey_public IS DISTINCT FROM OLD.prekey_public AND NEW.public_key IS NOT DISTINCT FROM OLD.public_key THEN
        NEW.public_key := NEW.prekey_public;
    ELSIF NEW.public_key IS DISTINCT FROM OLD.public_key AND NEW.prekey_public IS NOT DISTINCT FROM OLD.prekey_public THEN
        NEW.prekey_public := NEW.public_key;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.prekey_private_encrypted IS NULL THEN
            NEW.prekey_private_encrypted := NEW.private_key_encrypted;
        ELSIF NEW.private_key_encrypted IS NULL THEN
            NEW.private_key_encrypted := NEW.prekey_private_encrypted;
        END IF;
    ELSIF NEW.prekey_private_encrypted IS DISTINCT FROM OLD.prekey_private_encrypted AND NEW.private_key_encrypted IS NOT DISTINCT FROM OLD.private_key_encrypted THEN
        NEW.private_key_encrypted := NEW.prekey_private_encrypted;
    ELSIF NEW.private_key_encrypted IS DISTINCT FROM OLD.private_key_encrypted AND NEW.prekey_private_encrypted IS NOT DISTINCT FROM OLD.prekey_private_encrypted THEN
        NEW.prekey_private_encrypted := NEW.private_key_encrypted;
    END IF;
    -- One primary-key probe per row: key upload stays flat in the number of devices.
    IF TG_OP = 'INSERT' OR NEW.device_id IS DISTINCT FROM OLD.device_id OR NEW.user_id IS DISTINCT FROM OLD.user_id THEN
        SELECT k.user_id INTO v_owner FROM nchat_identity_keys k WHERE k.device_id = NEW.device_id;
        IF v_owner IS NOT NULL THEN
            IF NEW.user_id IS NULL THEN
                NEW.user_id := v_owner;
            ELSIF NEW.user_id <> v_owner THEN
                RAISE EXCEPTION 'device % belongs to another user than %', NEW.device_id, NEW.user_id
                    USING ERRCODE = '23514', TABLE = TG_TABLE_NAME, COLUMN = 'user_id';
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION nchat_signal_sessions_sync_names()
RETURNS TRIGGER
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_owner UUID;
BEGIN
    -- One primary-key probe per row: key upload stays flat in the number of devices.
    IF TG_OP = 'INSERT' OR NEW.device_id IS DISTINCT FROM OLD.device_id OR NEW.user_id IS DISTINCT FROM OLD.user_id THEN
        SELECT k.user_id INTO v_owner FROM nchat_identity_keys k WHERE k.device_id = NEW.device_id;
        IF v_owner IS NOT NULL THEN
            IF NEW.user_id IS NULL THEN
                NEW.user_id := v_owner;
            ELSIF NEW.user_id <> v_owner THEN
                RAISE EXCEPTION 'device % belongs to another user than %', NEW.device_id, NEW.user_id
                    USING ERRCODE = '23514', TABLE = TG_TABLE_NAME, COLUMN = 'user_id';
            END IF;
        END IF;
    END IF;
    -- The application may send NULL counters, the guide last_message_at follows the newest message.
    IF TG_OP = 'INSERT' THEN
        NEW.send_counter := COALESCE(NEW.send_counter, 0);
        NEW.receive_counter := COALESCE(NEW.receive_counter, 0);
    ELSE
        NEW.send_counter := COALESCE(NEW.send_counter, OLD.send_counter, 0);
        NEW.receive_counter := COALESCE(NEW.receive_counter, OLD.receive_counter, 0);
    END IF;
    IF (TG_OP = 'INSERT'
        OR NEW.last_message_sent_at IS DISTINCT FROM OLD.last_message_sent_at
        OR NEW.last_message_received_at IS DISTINCT FROM OLD.last_message_received_at)
       AND GREATEST(NEW.last_message_sent_at, NEW.last_message_received_at) IS NOT NULL THEN
        NEW.last_message_at := GREATEST(NEW.last_message_at, NEW.last_message_sent_at, NEW.last_message_received_at);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION nchat_e2ee_audit_log_sync_names()
RETURNS TRIGGER
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.metadata IS NULL THEN
            NEW.metadata := NEW.event_data;
        ELSIF NEW.event_data IS NULL THEN
            NEW.event_data := NEW.metadata;
        END IF;
    ELSIF NEW.metadata IS DISTINCT FROM OLD.metadata AND NEW.event_data IS NOT DISTINCT FROM OLD.event_data THEN
        NEW.event_data := NEW.metadata;
    ELSIF NEW.event_data IS DISTINCT FROM OLD.event_data AND NEW.metadata IS NOT DISTINCT FROM OLD.metadata THEN
        NEW.metadata := NEW.event_data;
    END IF;
    RETURN NEW;
END
$$;

-- Rows that 013 or a hand run of the guide SQL already wrote get their twins before the CHECKs.
UPDATE nchat_user_master_keys
   SET salt = COALESCE(salt, master_key_salt),
       iterations = COALESCE(iterations, pbkdf2_iterations),
       recovery_code_hash_bytes = COALESCE(recovery_code_hash_bytes, nchat_recovery_hash_bytes(recovery_code_hash))
 WHERE salt IS NULL OR iterations IS NULL OR recovery_code_hash_bytes IS NULL;
UPDATE nchat_signed_prekeys s
   SET user_id = COALESCE(s.user_id, k.user_id),
       key_id = COALESCE(s.key_id, s.signed_prekey_id),
       public_key = COALESCE(s.public_key, s.signed_prekey_public),
       private_key_encrypted = COALESCE(s.private_key_encrypted, s.signed_prekey_private_encrypted)
  FROM nchat_identity_keys k
 WHERE k.device_id = s.device_id
   AND (s.user_id IS NULL OR s.key_id IS NULL OR s.public_key IS NULL OR s.private_key_encrypted IS NULL);
UPDATE nchat_one_time_prekeys o
   SET user_id = COALESCE(o.user_id, k.user_id),
       key_id = COALESCE(o.key_id, o.prekey_id),
       public_key = COALESCE(o.public_key, o.prekey_public),
       private_key_encrypted = COALESCE(o.private_key_encrypted, o.prekey_private_encrypted)
  FROM nchat_identity_keys k
 WHERE k.device_id = o.device_id
   AND (o.user_id IS NULL OR o.key_id IS NULL OR o.public_key IS NULL OR o.private_key_encrypted IS NULL);
UPDATE nchat_signal_sessions s
   SET user_id = k.user_id
  FROM nchat_identity_keys k
 WHERE k.device_id = s.device_id AND s.user_id IS NULL;
UPDATE nchat_e2ee_audit_log SET event_data = metadata WHERE event_data IS NULL AND metadata IS NOT NULL;

ALTER TABLE nchat_signed_prekeys ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE nchat_one_time_prekeys ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE nchat_signal_sessions ALTER COLUMN user_id SET NOT NULL;

-- Named constraints: the application upserts name their conflict targets, so these carry exactly
-- the names it uses (nchat_signal_sessions_user_id_device_id_peer_user_id_peer_key is not the name
-- PostgreSQL would generate for that UNIQUE). ADD CONSTRAINT has no IF NOT EXISTS: look first.
DO $$
DECLARE
    v_con record;
BEGIN
    FOR v_con IN
        SELECT * FROM (VALUES
            ('nchat_user_master_keys', 'nchat_user_master_keys_user_id_key', 'UNIQUE (user_id)'),
            ('nchat_user_master_keys', 'chk_user_master_keys_salt_twin', 'CHECK (salt IS NOT DISTINCT FROM master_key_salt)'),
            ('nchat_user_master_keys', 'chk_user_master_keys_iterations_twin', 'CHECK (iterations IS NOT DISTINCT FROM pbkdf2_iterations)'),
            ('nchat_user_master_keys', 'chk_user_master_keys_recovery_code_hash_twin', 'CHECK (recovery_code_hash_bytes IS NOT DISTINCT FROM nchat_recovery_hash_bytes(recovery_code_hash))'),
            ('nchat_signed_prekeys', 'nchat_signed_prekeys_user_id_device_id_key_id_key', 'UNIQUE (user_id, device_id, key_id)'),
            ('nchat_signed_prekeys', 'fk_signed_prekeys_user', 'FOREIGN KEY (user_id) REFERENCES nchat_users(id) ON DELETE CASCADE'),
            ('nchat_signed_prekeys', 'chk_signed_prekeys_key_id_twin', 'CHECK (key_id IS NOT DISTINCT FROM signed_prekey_id)'),
            ('nchat_signed_prekeys', 'chk_signed_prekeys_public_key_twin', 'CHECK (public_key IS NOT DISTINCT FROM signed_prekey_public)'),
            ('nchat_signed_prekeys', 'chk_signed_prekeys_private_key_twin', 'CHECK (private_key_encrypted IS NOT DISTINCT FROM signed_prekey_private_encrypted)'),
            ('nchat_one_time_prekeys', 'nchat_one_time_prekeys_user_id_device_id_key_id_key', 'UNIQUE (user_id, device_id, key_id)'),
            ('nchat_one_time_prekeys', 'fk_one_time_prekeys_user', 'FOREIGN KEY (user_id) REFERENCES nchat_users(id) ON DELETE CASCADE'),
            ('nchat_one_time_prekeys', 'fk_one_time_prekeys_consumed_by', 'FOREIGN KEY (consumed_by) REFERENCES nchat_users(id) ON DELETE SET NULL'),
            ('nchat_one_time_prekeys', 'chk_one_time_prekeys_key_id_twin', 'CHECK (key_id IS NOT DISTINCT FROM prekey_id)'),
            ('nchat_one_time_prekeys', 'chk_one_time_prekeys_public_key_twin', 'CHECK (public_key IS NOT DISTINCT FROM prekey_public)'),
            ('nchat_one_time_prekeys', 'chk_one_time_prekeys_private_key_twin', 'CHECK (private_key_encrypted IS NOT DISTINCT FROM prekey_private_encrypted)'),
            ('nchat_signal_sessions', 'nchat_signal_sessions_user_id_device_id_peer_user_id_peer_key', 'UNIQUE (user_id, device_id, peer_user_id, peer_device_id)'),
            ('nchat_signal_sessions', 'fk_signal_sessions_user', 'FOREIGN KEY (user_id) REFERENCES nchat_users(id) ON DELETE CASCADE'),
            ('nchat_signal_sessions', 'chk_signal_sessions_counters', 'CHECK (send_counter >= 0 AND receive_counter >= 0)'),
            ('nchat_safety_numbers', 'fk_safety_numbers_verified_by', 'FOREIGN KEY (verified_by_user_id) REFERENCES nchat_users(id) ON DELETE SET NULL'),
            ('nchat_e2ee_audit_log', 'chk_e2ee_audit_log_event_data_twin', 'CHECK (event_data IS NOT DISTINCT FROM metadata)')
        ) AS c(tbl, name, def)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_constraint con
             WHERE con.conrelid = v_con.tbl::regclass AND con.conname = v_con.name
        ) THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', v_con.tbl, v_con.name, v_con.def);
        END IF;
    END LOOP;
END
$$;

-- The foreign keys above without a leading index of their own.
CREATE INDEX IF NOT EXISTS idx_one_time_prekeys_consumed_by ON nchat_one_time_prekeys(consumed_by)
    WHERE consumed_by IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_safety_numbers_verified_by ON nchat_safety_numbers(verified_by_user_id)
    WHERE verified_by_user_id IS NOT NULL;

CREATE OR REPLACE TRIGGER nchat_user_master_keys_sync_names
    BEFORE INSERT OR UPDATE ON nchat_user_master_keys
    FOR EACH ROW EXECUTE FUNCTION nchat_user_master_keys_sync_names();
CREATE OR REPLACE TRIGGER nchat_signed_prekeys_sync_names
    BEFORE INSERT OR UPDATE ON nchat_signed_prekeys
    FOR EACH ROW EXECUTE FUNCTION nchat_signed_prekeys_sync_names();
CREATE OR REPLACE TRIGGER nchat_one_time_prekeys_sync_names
    BEFORE INSERT OR UPDATE ON nchat_one_time_prekeys
    FOR EACH ROW EXECUTE FUNCTION nchat_one_time_prekeys_sync_names();
CREATE OR REPLACE TRIGGER nchat_signal_sessions_sync_names
    BEFORE INSERT OR UPDATE ON nchat_signal_sessions
    FOR EACH ROW EXECUTE FUNCTION nchat_signal_sessions_sync_names();
CREATE OR REPLACE TRIGGER nchat_e2ee_audit_log_sync_names
    BEFORE INSERT OR UPDATE ON nchat_e2ee_audit_log
    FOR EACH ROW EXECUTE FUNCTION nchat_e2ee_audit_log_sync_names();

-- The conventions of the database these tables join (docs/deviations.md Conventions): where the
-- existing nchat_* tables keep updated_at with update_updated_at_column() (nChat own reference
-- database does, in schema nchat), the new tables use the same function, where they use row-level
-- security, the new tables do too, each row visible to the user it belongs to (Hasura passes the
-- session as the setting hasura.user). Roles that bypass row-level security (the owner, Hasuras
-- admin connection) are not affected.
DO $$
DECLARE
    v_me  CONSTANT text := $q$nullif(nullif(current_setting('hasura.user', true), '')::jsonb ->> 'x-hasura-user-id', '')::uuid$q$;
    v_t   text;
    v_pol record;
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = current_schema() AND p.proname = 'update_updated_at_column'
           AND p.pronargs = 0 AND p.prorettype = 'trigger'::regtype
    ) THEN
        FOREACH v_t IN ARRAY ARRAY['nchat_user_master_keys', 'nchat_signal_sessions', 'nchat_safety_numbers'] LOOP
            EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION update_updated_at_column()',
                           'update_' || v_t || '_updated_at', v_t);
        END LOOP;
    END IF;

    IF EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relrowsecurity
           AND c.relname IN ('nchat_users', 'nchat_channels', 'nchat_channel_members', 'nchat_messages')
    ) THEN
        FOR v_pol IN
            SELECT * FROM (VALUES
                ('nchat_user_master_keys', 'user_id = ' || v_me),
                ('nchat_identity_keys', 'user_id = ' || v_me),
                ('nchat_signed_prekeys', 'user_id = ' || v_me),
                ('nchat_one_time_prekeys', 'user_id = ' || v_me),
                ('nchat_signal_sessions', 'user_id = ' || v_me),
                ('nchat_safety_numbers', 'user_id = ' || v_me),
                ('nchat_e2ee_audit_log', 'user_id = ' || v_me)
            ) AS p(tbl, pred)
        LOOP
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', v_pol.tbl);
            EXECUTE format('DROP POLICY IF EXISTS %I ON %I', v_pol.tbl || '_owner', v_pol.tbl);
            EXECUTE format('CREATE POLICY %I ON %I USING (%s) WITH CHECK (%s)', v_pol.tbl || '_owner', v_pol.tbl, v_pol.pred, v_pol.pred);
        END LOOP;
        -- Anyone may fetch another users public bundle: identity keys and unconsumed prekeys are public halves.
        DROP POLICY IF EXISTS nchat_identity_keys_public_read ON nchat_identity_keys;
        CREATE POLICY nchat_identity_keys_public_read ON nchat_identity_keys FOR SELECT USING (is_active);
        DROP POLICY IF EXISTS nchat_signed_prekeys_public_read ON nchat_signed_prekeys;
        CREATE POLICY nchat_signed_prekeys_public_read ON nchat_signed_prekeys FOR SELECT USING (is_active);
        DROP POLICY IF EXISTS nchat_one_time_prekeys_public_read ON nchat_one_time_prekeys;
        CREATE POLICY nchat_one_time_prekeys_public_read ON nchat_one_time_prekeys FOR SELECT USING (NOT is_consumed);
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Part 3. nchat_prekey_bundles as a plain view, always fresh (D2), and the atomic claim.
-- ---------------------------------------------------------------------------------------------

-- Newest active signed prekey of a device: one index probe, first entry.
CREATE INDEX IF NOT EXISTS idx_signed_prekeys_newest
    ON nchat_signed_prekeys(device_id, created_at DESC, signed_prekey_id DESC)
    WHERE is_active = TRUE;

-- Oldest unconsumed one-time prekey of a device: one index probe, first entry.
CREATE INDEX IF NOT EXISTS idx_one_time_prekeys_next
    ON nchat_one_time_prekeys(device_id, created_at, prekey_id)
    WHERE is_consumed = FALSE;

-- Same name and the same eight columns in the same order as the guide materialized view, then the
-- four the application reads (registration_id, signed_prekey_signature, last_used_at, created_at).
-- One row per active identity key that has an active signed prekey. During rotation a device has
-- two active signed prekeys: the newest one is taken (the guide view gave two rows and broke its
-- unique index). Ties on created_at are broken by the key ids. A device the application
-- deactivated (is_active = FALSE) offers no bundle.
CREATE OR REPLACE VIEW nchat_prekey_bundles AS
SELECT
    ik.user_id,
    ik.device_id,
    ik.identity_key_public,
    sp.signed_prekey_id,
    sp.signed_prekey_public,
    sp.signature,
    otp.prekey_id AS one_time_prekey_id,
    otp.prekey_public AS one_time_prekey_public,
    ik.registration_id,
    sp.signature AS signed_prekey_signature,
    ik.last_used_at,
    ik.created_at
FROM nchat_identity_keys ik
JOIN LATERAL (
    SELECT s.signed_prekey_id, s.signed_prekey_public, s.signature
      FROM nchat_signed_prekeys s
     WHERE s.device_id = ik.device_id
       AND s.is_active = TRUE
     ORDER BY s.created_at DESC, s.signed_prekey_id DESC
     LIMIT 1
) sp ON TRUE
LEFT JOIN LATERAL (
    SELECT o.prekey_id, o.prekey_public
      FROM nchat_one_time_prekeys o
     WHERE o.device_id = ik.device_id
       AND o.is_consumed = FALSE
     ORDER BY o.created_at, o.prekey_id
     LIMIT 1
) otp ON TRUE
WHERE ik.is_active = TRUE;

-- Claim the prekey bundle of a device for a new session: marks the oldest unconsumed one-time
-- prekey consumed and returns the bundle carrying it, so two session setups never share a
-- one-time prekey. one_time_prekey_* are NULL when the device has none left (the protocol
-- allows that). No row when the device has no bundle, and then nothing is consumed.
-- SKIP LOCKED lets concurrent claimers take the next key instead of queueing on the same row.
-- Under READ COMMITTED the locking subquery can still come back empty when a concurrent claimer
-- has just consumed the candidate row, so it is retried a few times while unconsumed keys remain.
-- It returns SETOF the views row type, which is what Hasura needs to track it as a mutation.
DROP FUNCTION IF EXISTS nchat_claim_prekey_bundle(TEXT);
CREATE OR REPLACE FUNCTION nchat_claim_prekey_bundle(p_device_id TEXT)
RETURNS SETOF nchat_prekey_bundles
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_bundle  nchat_prekey_bundles;
    v_otp_id  INTEGER;
    v_otp_pub BYTEA;
    v_attempt INTEGER := 0;
BEGIN
    SELECT b.* INTO v_bundle
      FROM nchat_prekey_bundles b
     WHERE b.device_id = p_device_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    LOOP
        v_attempt := v_attempt + 1;

        UPDATE nchat_one_time_prekeys AS o
           SET is_consumed = TRUE,
               consumed_at = now()
         WHERE o.id = (
                   SELECT n.id
                     FROM nchat_one_time_prekeys n
                    WHERE n.device_id = p_device_id
                      AND n.is_consumed = FALSE
                    ORDER BY n.created_at, n.prekey_id
                    LIMIT 1
                      FOR UPDATE SKIP LOCKED
               )
           AND o.is_consumed = FALSE
        RETURNING o.prekey_id, o.prekey_public
             INTO v_otp_id, v_otp_pub;

        EXIT WHEN FOUND;
        EXIT WHEN v_attempt >= 5;
        EXIT WHEN NOT EXISTS (
            SELECT 1
              FROM nchat_one_time_prekeys n
             WHERE n.device_id = p_device_id
               AND n.is_consumed = FALSE
        );
    END LOOP;

    v_bundle.one_time_prekey_id := v_otp_id;
    v_bundle.one_time_prekey_public := v_otp_pub;
    RETURN NEXT v_bundle;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Part 4. Existing big tables, last in the transaction (D5: the engine sets a short lock_timeout
-- and retries). Adding a column with a constant default does not rewrite the table.
-- ---------------------------------------------------------------------------------------------

-- Lock order: nchat_messages before nchat_channels, the order in which every message INSERT takes
-- them (its row, then the foreign key check on the channel). Altering nchat_channels first made a
-- lock cycle with each insert in flight, so busy writers starved the migration or were killed as
-- deadlock victims. A new statement on either table belongs after the ALTER of nchat_messages.
ALTER TABLE nchat_messages
    ADD COLUMN IF NOT EXISTS is_encrypted BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN IF NOT EXISTS encrypted_payload BYTEA,
    ADD COLUMN IF NOT EXISTS sender_device_id TEXT,
    ADD COLUMN IF NOT EXISTS encryption_version INTEGER;

ALTER TABLE nchat_channels
    ADD COLUMN IF NOT EXISTS enforce_encryption BOOLEAN NOT NULL DEFAULT FALSE;

-- D3: NOT VALID adds the foreign key without scanning nchat_messages. It is validated in part 5.
-- A constraint of that name that already exists (hand-run guide SQL, validated) is kept.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
          FROM pg_constraint con
         WHERE con.conrelid = 'nchat_messages'::regclass
           AND con.conname = 'fk_messages_sender_device'
    ) THEN
        ALTER TABLE nchat_messages
            ADD CONSTRAINT fk_messages_sender_device
            FOREIGN KEY (sender_device_id) REFERENCES nchat_identity_keys(device_id)
            ON DELETE SET NULL
            NOT VALID;
    END IF;
END
$$;

-- D4: an index left INVALID by an interrupted build (a previous run stopped in part 5) would be
-- skipped by the IF NOT EXISTS builds of part 5. This transaction now holds ACCESS EXCLUSIVE on
-- both tables, so no build can still be running on them: such an index is a leftover. It is
-- dropped here, at no extra locking cost, and built again in part 5.
DO $$
DECLARE
    v_idx record;
BEGIN
    FOR v_idx IN
        SELECT i.relname
          FROM pg_index x
          JOIN pg_class i ON i.oid = x.indexrelid
          JOIN pg_namespace n ON n.oid = i.relnamespace
         WHERE n.nspname = current_schema()
           AND i.relname IN ('idx_messages_encrypted', 'idx_messages_sender_device', 'idx_channels_enforce_encryption')
           AND NOT x.indisvalid
    LOOP
        EXECUTE format('DROP INDEX %I', v_idx.relname);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Part 5. Non-transactional tail. Each statement runs alone, outside any transaction.
-- D4: the indexes on the existing big tables are built without blocking writes.
-- D3: the foreign key is validated under a lock that lets reads and writes go on.
-- ---------------------------------------------------------------------------------------------

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_messages_encrypted ON nchat_messages(channel_id, is_encrypted)
    WHERE is_encrypted = TRUE;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_messages_sender_device ON nchat_messages(sender_device_id)
    WHERE sender_device_id IS NOT NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_channels_enforce_encryption ON nchat_channels(enforce_encryption)
    WHERE enforce_encryption = TRUE;

ALTER TABLE nchat_messages VALIDATE CONSTRAINT fk_messages_sender_device;
