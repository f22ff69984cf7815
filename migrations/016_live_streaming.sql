-- 016_live_streaming.sql  (live streaming)
--
-- Two tables: nchat_streams (one row per broadcast) and nchat_stream_viewers (one row per
-- viewing session of a user).
-- The stream key is never stored in clear: only its SHA-256 hash, as 64 lowercase hex digits.
-- Conventions of the guide: nchat_ prefix, UUID keys, foreign keys to nchat_users(id) and
-- nchat_channels(id) with an explicit ON DELETE, CHECK constraints for enumerations, an index for
-- every foreign key and every lookup. Only new tables: everything is transactional.
-- Idempotent: every object is created IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS nchat_streams (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    broadcaster_id UUID NOT NULL,
    -- NULL for a stream not published in a channel.
    channel_id UUID,
    title TEXT NOT NULL,
    description TEXT,
    status TEXT NOT NULL DEFAULT 'scheduled',
    stream_key_hash TEXT NOT NULL,  -- SHA-256 of the stream key, lowercase hex
    scheduled_at TIMESTAMP WITH TIME ZONE,
    started_at TIMESTAMP WITH TIME ZONE,
    ended_at TIMESTAMP WITH TIME ZONE,
    viewer_count INTEGER NOT NULL DEFAULT 0,       -- viewers right now
    peak_viewer_count INTEGER NOT NULL DEFAULT 0,  -- highest viewer_count seen
    total_view_count INTEGER NOT NULL DEFAULT 0,   -- viewing sessions so far
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_streams_pkey PRIMARY KEY (id),
    CONSTRAINT fk_streams_broadcaster FOREIGN KEY (broadcaster_id)
        REFERENCES nchat_users(id) ON DELETE CASCADE,
    CONSTRAINT fk_streams_channel FOREIGN KEY (channel_id)
        REFERENCES nchat_channels(id) ON DELETE CASCADE,
    -- The ingest server finds the stream by the hash of the key it is given.
    CONSTRAINT uq_streams_stream_key_hash UNIQUE (stream_key_hash),
    CONSTRAINT chk_streams_stream_key_hash CHECK (stream_key_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT chk_streams_title CHECK (length(btrim(title)) BETWEEN 1 AND 200),
    CONSTRAINT chk_streams_status CHECK (status IN ('scheduled', 'live', 'ended')),
    CONSTRAINT chk_streams_live_started CHECK (status <> 'live' OR started_at IS NOT NULL),
    CONSTRAINT chk_streams_ended_after_started CHECK (ended_at IS NULL OR started_at IS NULL OR ended_at >= started_at),
    CONSTRAINT chk_streams_viewer_count CHECK (viewer_count >= 0),
    CONSTRAINT chk_streams_peak_viewer_count CHECK (peak_viewer_count >= 0),
    CONSTRAINT chk_streams_total_view_count CHECK (total_view_count >= 0)
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
    user_id UUID NOT NULL,
    joined_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    left_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_stream_viewers_pkey PRIMARY KEY (id),
    CONSTRAINT fk_stream_viewers_stream FOREIGN KEY (stream_id)
        REFERENCES nchat_streams(id) ON DELETE CASCADE,
    CONSTRAINT fk_stream_viewers_user FOREIGN KEY (user_id)
        REFERENCES nchat_users(id) ON DELETE CASCADE,
    -- A user may leave and come back: one row per viewing session. Its index also serves
    -- lookups by stream_id.
    CONSTRAINT uq_stream_viewers_stream_user_joined UNIQUE (stream_id, user_id, joined_at),
    CONSTRAINT chk_stream_viewers_left_after_joined CHECK (left_at IS NULL OR left_at >= joined_at)
);

-- Streams a user watched, newest first.
CREATE INDEX IF NOT EXISTS idx_stream_viewers_user_id ON nchat_stream_viewers(user_id, joined_at DESC);
-- Who is watching right now.
CREATE INDEX IF NOT EXISTS idx_stream_viewers_watching ON nchat_stream_viewers(stream_id)
    WHERE left_at IS NULL;
