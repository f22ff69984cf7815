-- 015_voice_calls.sql  (voice and video calls)
--
-- Three tables: nchat_calls (one row per call), nchat_call_participants (one row per call and
-- user) and nchat_call_events (append-only log per call). The guide only names them, their shape
-- is what nChat call code uses (frontend/src/graphql/calls.ts, app/api/calls/*): the client makes
-- its own call id, call_id TEXT, and every lookup, update and participant row goes by it.
-- Conventions of the guide: nchat_ prefix, foreign keys to nchat_users(id) and nchat_channels(id)
-- with an explicit ON DELETE, CHECK constraints for enumerations, an index for every foreign key
-- and every lookup. Only new tables: everything is transactional.
-- CREATE TABLE IF NOT EXISTS never keeps a table of another shape: preflight refuses such a
-- database before anything runs, and the check at the end of this file stops the migration.

CREATE TABLE IF NOT EXISTS nchat_calls (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    call_id TEXT NOT NULL,  -- the id the client gave the call
    type TEXT NOT NULL DEFAULT 'voice',
    status TEXT NOT NULL DEFAULT 'initiating',
    -- The call history outlives the caller account.
    caller_id UUID,
    -- NULL for a direct call outside any channel.
    channel_id UUID,
    metadata JSONB DEFAULT '{}'::jsonb,
    started_at TIMESTAMP WITH TIME ZONE,
    ended_at TIMESTAMP WITH TIME ZONE,
    duration INTEGER,  -- seconds
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_calls_pkey PRIMARY KEY (id),
    CONSTRAINT nchat_calls_call_id_key UNIQUE (call_id),
    CONSTRAINT fk_calls_caller FOREIGN KEY (caller_id)
        REFERENCES nchat_users(id) ON DELETE SET NULL,
    CONSTRAINT fk_calls_channel FOREIGN KEY (channel_id)
        REFERENCES nchat_channels(id) ON DELETE CASCADE,
    CONSTRAINT chk_calls_call_id CHECK (length(call_id) BETWEEN 1 AND 200),
    CONSTRAINT chk_calls_type CHECK (type IN ('voice', 'video')),
    CONSTRAINT chk_calls_status CHECK (status IN ('idle', 'initiating', 'ringing', 'connecting', 'connected', 'reconnecting', 'ended', 'declined')),
    CONSTRAINT chk_calls_ended_after_started CHECK (ended_at IS NULL OR started_at IS NULL OR ended_at >= started_at),
    CONSTRAINT chk_calls_duration CHECK (duration IS NULL OR duration >= 0)
);

-- Call history of a user, of a channel, newest first (the application orders by started_at).
CREATE INDEX IF NOT EXISTS idx_calls_caller_id ON nchat_calls(caller_id, started_at DESC);
CREATE INDEX IF NOT EXISTS idx_calls_channel_id ON nchat_calls(channel_id, started_at DESC)
    WHERE channel_id IS NOT NULL;
-- Calls in progress are few and looked up often (GetActiveCalls, incoming calls).
CREATE INDEX IF NOT EXISTS idx_calls_ongoing ON nchat_calls(status, started_at DESC)
    WHERE status IN ('initiating', 'ringing', 'connecting', 'connected', 'reconnecting');

CREATE TABLE IF NOT EXISTS nchat_call_participants (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    call_id TEXT NOT NULL,  -- nchat_calls.call_id, the id of the client, not the uuid
    user_id UUID NOT NULL,
    joined_at TIMESTAMP WITH TIME ZONE,
    left_at TIMESTAMP WITH TIME ZONE,
    is_muted BOOLEAN NOT NULL DEFAULT FALSE,
    is_video_enabled BOOLEAN NOT NULL DEFAULT FALSE,
    is_screen_sharing BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_call_participants_pkey PRIMARY KEY (id),
    CONSTRAINT fk_call_participants_call FOREIGN KEY (call_id)
        REFERENCES nchat_calls(call_id) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_call_participants_user FOREIGN KEY (user_id)
        REFERENCES nchat_users(id) ON DELETE CASCADE,
    -- One row per call and user, the application conflict target (its own name). Its index also
    -- serves lookups by call_id.
    CONSTRAINT call_participants_call_user_unique UNIQUE (call_id, user_id),
    CONSTRAINT chk_call_participants_left_after_joined CHECK (left_at IS NULL OR joined_at IS NULL OR left_at >= joined_at)
);

-- Calls of a user, newest first.
CREATE INDEX IF NOT EXISTS idx_call_participants_user_id ON nchat_call_participants(user_id, created_at DESC);
-- Who is in the call right now.
CREATE INDEX IF NOT EXISTS idx_call_participants_connected ON nchat_call_participants(call_id)
    WHERE joined_at IS NOT NULL AND left_at IS NULL;

CREATE TABLE IF NOT EXISTS nchat_call_events (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    call_id TEXT NOT NULL,
    -- Who caused the event, NULL for system events. The log outlives the account.
    user_id UUID,
    event_type TEXT NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Append-only: rows are never updated, so there is no updated_at.
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_call_events_pkey PRIMARY KEY (id),
    CONSTRAINT fk_call_events_call FOREIGN KEY (call_id)
        REFERENCES nchat_calls(call_id) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT fk_call_events_user FOREIGN KEY (user_id)
        REFERENCES nchat_users(id) ON DELETE SET NULL,
    CONSTRAINT chk_call_events_event_type CHECK (event_type IN (
        'call_started',
        'call_ringing',
        'call_answered',
        'call_ended',
        'call_missed',
        'call_declined',
        'call_failed',
        'participant_invited',
        'participant_joined',
        'participant_left',
        'participant_declined',
        'muted',
        'unmuted',
        'video_enabled',
        'video_disabled',
        'screen_share_started',
        'screen_share_stopped'
    ))
);

-- The log of one call in order.
CREATE INDEX IF NOT EXISTS idx_call_events_call_id ON nchat_call_events(call_id, created_at);
CREATE INDEX IF NOT EXISTS idx_call_events_user_id ON nchat_call_events(user_id)
    WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_call_events_event_type ON nchat_call_events(event_type, created_at DESC);

-- A table of the same name made by something else (nChat later 0007 calls migration has
-- initiator_id and no call_id) is never silently kept: stop, naming the columns it lacks.
DO $$
DECLARE
    v_t record;
    v_missing text;
BEGIN
    FOR v_t IN
        SELECT * FROM (VALUES
            ('nchat_calls', ARRAY['id', 'call_id', 'type', 'status', 'caller_id', 'channel_id', 'metadata', 'started_at', 'ended_at', 'duration', 'created_at', 'updated_at']),
            ('nchat_call_participants', ARRAY['id', 'call_id', 'user_id', 'joined_at', 'left_at', 'is_muted', 'is_video_enabled', 'is_screen_sharing']),
            ('nchat_call_events', ARRAY['id', 'call_id', 'user_id', 'event_type', 'metadata', 'created_at'])
        ) AS t(tbl, cols)
    LOOP
        SELECT string_agg(c, ', ') INTO v_missing
          FROM unnest(v_t.cols) AS c
         WHERE NOT EXISTS (
             SELECT 1 FROM pg_attribute a
              WHERE a.attrelid = v_t.tbl::regclass AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION 'table % already exists in another shape: it has no column %', v_t.tbl, v_missing
                USING HINT = 'It was not made by this migration; rename or drop it, then run the migration again.';
        END IF;
    END LOOP;
END
$$;

-- The conventions of the database these tables join (see 014): updated_at by the existing
-- update_updated_at_column(), row-level security when the existing nchat_* tables use it.
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
        FOREACH v_t IN ARRAY ARRAY['nchat_calls', 'nchat_call_participants'] LOOP
            EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION update_updated_at_column()',
                           'update_' || v_t || '_updated_at', v_t);
        END LOOP;
    END IF;

    IF EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relrowsecurity
           AND c.relname IN ('nchat_users', 'nchat_channels', 'nchat_channel_members', 'nchat_messages')
    ) THEN
        -- A participant sees their own rows, a call is seen by its caller and its participants.
        FOR v_pol IN
            SELECT * FROM (VALUES
                ('nchat_call_participants', 'user_id = ' || v_me),
                ('nchat_calls', 'caller_id = ' || v_me || ' OR EXISTS (SELECT 1 FROM nchat_call_participants p WHERE p.call_id = nchat_calls.call_id AND p.user_id = ' || v_me || ')'),
                ('nchat_call_events', 'EXISTS (SELECT 1 FROM nchat_calls c WHERE c.call_id = nchat_call_events.call_id)')
            ) AS p(tbl, pred)
        LOOP
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', v_pol.tbl);
            EXECUTE format('DROP POLICY IF EXISTS %I ON %I', v_pol.tbl || '_owner', v_pol.tbl);
            EXECUTE format('CREATE POLICY %I ON %I USING (%s) WITH CHECK (%s)', v_pol.tbl || '_owner', v_pol.tbl, v_pol.pred, v_pol.pred);
        END LOOP;
    END IF;
END
$$;
