-- 016_live_streaming.sql  (live streaming)
--
-- Two tables: nchat_streams (one row per broadcast) and nchat_stream_viewers (one row per viewing
-- session, signed in or anonymous). The guide only names them, their shape is what nChat stream
-- code uses (frontend/src/lib/streaming/stream-types.ts, app/api/streams/*, disabled in v0.4.0).
-- The application writes the stream key and reads it back: only the broadcaster may read it
-- (row-level security below where the database uses it, Hasuras permissions, see
-- src/hasura/metadata.ts, give stream_key and ingest_url to the broadcasters rows only).
-- Conventions of the guide: nchat_ prefix, foreign keys to nchat_users(id) and nchat_channels(id)
-- with an explicit ON DELETE, CHECK constraints for enumerations, an index for every foreign key
-- and every lookup. Only new tables: everything is transactional.

CREATE TABLE IF NOT EXISTS nchat_streams (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    broadcaster_id UUID NOT NULL,
    -- NULL for a stream not published in a channel.
    channel_id UUID,
    title TEXT NOT NULL,
    description TEXT,
    thumbnail_url TEXT,
    status TEXT NOT NULL DEFAULT 'preparing',
    stream_key TEXT NOT NULL,
    ingest_url TEXT,
    hls_manifest_url TEXT,
    dash_manifest_url TEXT,
    max_resolution TEXT NOT NULL DEFAULT '1080p',
    bitrate_kbps INTEGER,
    fps INTEGER,
    is_recorded BOOLEAN NOT NULL DEFAULT FALSE,
    recording_url TEXT,
    recording_duration_seconds INTEGER,
    enable_chat BOOLEAN NOT NULL DEFAULT TRUE,
    enable_reactions BOOLEAN NOT NULL DEFAULT TRUE,
    enable_qa BOOLEAN NOT NULL DEFAULT FALSE,
    chat_mode TEXT NOT NULL DEFAULT 'open',
    tags TEXT[] NOT NULL DEFAULT '{}',
    language TEXT NOT NULL DEFAULT 'en',
    scheduled_at TIMESTAMP WITH TIME ZONE,
    started_at TIMESTAMP WITH TIME ZONE,
    ended_at TIMESTAMP WITH TIME ZONE,
    viewer_count INTEGER NOT NULL DEFAULT 0,       -- viewers right now
    peak_viewer_count INTEGER NOT NULL DEFAULT 0,  -- highest viewer_count seen
    total_view_count INTEGER NOT NULL DEFAULT 0,   -- viewing sessions so far
    total_chat_messages INTEGER NOT NULL DEFAULT 0,
    total_reactions INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_streams_pkey PRIMARY KEY (id),
    CONSTRAINT fk_streams_broadcaster FOREIGN KEY (broadcaster_id)
        REFERENCES nchat_users(id) ON DELETE CASCADE,
    CONSTRAINT fk_streams_channel FOREIGN KEY (channel_id)
        REFERENCES nchat_channels(id) ON DELETE CASCADE,
    -- The ingest server finds the stream by the key it is given.
    CONSTRAINT uq_streams_stream_key UNIQUE (stream_key),
    CONSTRAINT chk_streams_stream_key CHECK (length(stream_key) BETWEEN 32 AND 256),
    CONSTRAINT chk_streams_title CHECK (length(btrim(title)) BETWEEN 1 AND 200),
    CONSTRAINT chk_streams_status CHECK (status IN ('preparing', 'scheduled', 'live', 'ended', 'cancelled')),
    CONSTRAINT chk_streams_max_resolution CHECK (max_resolution IN ('auto', '1080p', '720p', '480p', '360p')),
    CONSTRAINT chk_streams_chat_mode CHECK (chat_mode IN ('open', 'followers', 'subscribers', 'disabled')),
    CONSTRAINT chk_streams_live_started CHECK (status <> 'live' OR started_at IS NOT NULL),
    CONSTRAINT chk_streams_ended_after_started CHECK (ended_at IS NULL OR started_at IS NULL OR ended_at >= started_at),
    CONSTRAINT chk_streams_counts CHECK (viewer_count >= 0 AND peak_viewer_count >= 0 AND total_view_count >= 0
        AND total_chat_messages >= 0 AND total_reactions >= 0
        AND (recording_duration_seconds IS NULL OR recording_duration_seconds >= 0))
);

-- Streams of a broadcaster, of a channel, newest first.
CREATE INDEX IF NOT EXISTS idx_streams_broadcaster_id ON nchat_streams(broadcaster_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_streams_channel_id ON nchat_streams(channel_id, created_at DESC)
    WHERE channel_id IS NOT NULL;
-- What is live now, what is coming up.
CREATE INDEX IF NOT EXISTS idx_streams_live ON nchat_streams(started_at DESC)
    WHERE status = 'live';
CREATE INDEX IF NOT EXISTS idx_streams_scheduled ON nchat_streams(scheduled_at)
    WHERE status = 'scheduled';

CREATE TABLE IF NOT EXISTS nchat_stream_viewers (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    stream_id UUID NOT NULL,
    -- NULL for an anonymous viewer.
    user_id UUID,
    session_id TEXT NOT NULL,
    selected_quality TEXT NOT NULL DEFAULT 'auto',
    joined_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    left_at TIMESTAMP WITH TIME ZONE,
    total_watch_time_seconds INTEGER NOT NULL DEFAULT 0,
    sent_chat_messages INTEGER NOT NULL DEFAULT 0,
    sent_reactions INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_stream_viewers_pkey PRIMARY KEY (id),
    CONSTRAINT fk_stream_viewers_stream FOREIGN KEY (stream_id)
        REFERENCES nchat_streams(id) ON DELETE CASCADE,
    CONSTRAINT fk_stream_viewers_user FOREIGN KEY (user_id)
        REFERENCES nchat_users(id) ON DELETE SET NULL,
    -- One row per viewing session. Its index also serves lookups by stream_id.
    CONSTRAINT uq_stream_viewers_stream_session UNIQUE (stream_id, session_id),
    CONSTRAINT chk_stream_viewers_selected_quality CHECK (selected_quality IN ('auto', '1080p', '720p', '480p', '360p')),
    CONSTRAINT chk_stream_viewers_left_after_joined CHECK (left_at IS NULL OR left_at >= joined_at),
    CONSTRAINT chk_stream_viewers_counts CHECK (total_watch_time_seconds >= 0 AND sent_chat_messages >= 0 AND sent_reactions >= 0)
);

-- Streams a user watched, newest first.
CREATE INDEX IF NOT EXISTS idx_stream_viewers_user_id ON nchat_stream_viewers(user_id, joined_at DESC)
    WHERE user_id IS NOT NULL;
-- Who is watching right now.
CREATE INDEX IF NOT EXISTS idx_stream_viewers_watching ON nchat_stream_viewers(stream_id)
    WHERE left_at IS NULL;

-- A table of the same name made by something else is never silently kept (see 015).
DO $$
DECLARE
    v_t record;
    v_missing text;
BEGIN
    FOR v_t IN
        SELECT * FROM (VALUES
            ('nchat_streams', ARRAY['id', 'broadcaster_id', 'channel_id', 'title', 'status', 'stream_key', 'ingest_url', 'max_resolution', 'enable_chat', 'chat_mode', 'tags', 'created_at', 'updated_at']),
            ('nchat_stream_viewers', ARRAY['id', 'stream_id', 'user_id', 'session_id', 'joined_at', 'left_at'])
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

-- The conventions of the database these tables join (see 014).
DO $$
DECLARE
    v_me  CONSTANT text := $q$nullif(nullif(current_setting('hasura.user', true), '')::jsonb ->> 'x-hasura-user-id', '')::uuid$q$;
    v_t   text;
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = current_schema() AND p.proname = 'update_updated_at_column'
           AND p.pronargs = 0 AND p.prorettype = 'trigger'::regtype
    ) THEN
        FOREACH v_t IN ARRAY ARRAY['nchat_streams', 'nchat_stream_viewers'] LOOP
            EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION update_updated_at_column()',
                           'update_' || v_t || '_updated_at', v_t);
        END LOOP;
    END IF;

    IF EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relrowsecurity
           AND c.relname IN ('nchat_users', 'nchat_channels', 'nchat_channel_members', 'nchat_messages')
    ) THEN
        -- Rows hold the stream key: the broadcaster alone reads and writes them.
        ALTER TABLE nchat_streams ENABLE ROW LEVEL SECURITY;
        DROP POLICY IF EXISTS nchat_streams_owner ON nchat_streams;
        EXECUTE format('CREATE POLICY nchat_streams_owner ON nchat_streams USING (broadcaster_id = %s) WITH CHECK (broadcaster_id = %s)', v_me, v_me);
        ALTER TABLE nchat_stream_viewers ENABLE ROW LEVEL SECURITY;
        DROP POLICY IF EXISTS nchat_stream_viewers_owner ON nchat_stream_viewers;
        EXECUTE format('CREATE POLICY nchat_stream_viewers_owner ON nchat_stream_viewers USING (user_id = %s) WITH CHECK (user_id = %s)', v_me, v_me);
    END IF;
END
$$;
