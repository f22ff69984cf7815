-- 015_voice_calls.sql  (voice and video calls)
--
-- Three tables: nchat_calls (one row per call), nchat_call_participants (one row per call and
-- user) and nchat_call_events (append-only log per call).
-- Conventions of the guide: nchat_ prefix, UUID keys, foreign keys to nchat_users(id) and
-- nchat_channels(id) with an explicit ON DELETE, CHECK constraints for enumerations, an index for
-- every foreign key and every lookup. Only new tables: everything is transactional.
-- Idempotent: every object is created IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS nchat_calls (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    call_type TEXT NOT NULL DEFAULT 'voice',
    status TEXT NOT NULL DEFAULT 'ringing',
    -- The call history outlives the caller account.
    caller_id UUID,
    -- NULL for a direct call outside any channel.
    channel_id UUID,
    started_at TIMESTAMP WITH TIME ZONE,  -- when the first callee answered
    ended_at TIMESTAMP WITH TIME ZONE,
    duration_seconds INTEGER,
    end_reason TEXT,
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_calls_pkey PRIMARY KEY (id),
    CONSTRAINT fk_calls_caller FOREIGN KEY (caller_id)
        REFERENCES nchat_users(id) ON DELETE SET NULL,
    CONSTRAINT fk_calls_channel FOREIGN KEY (channel_id)
        REFERENCES nchat_channels(id) ON DELETE CASCADE,
    CONSTRAINT chk_calls_call_type CHECK (call_type IN ('voice', 'video')),
    CONSTRAINT chk_calls_status CHECK (status IN ('ringing', 'active', 'ended', 'missed', 'declined', 'cancelled', 'failed')),
    CONSTRAINT chk_calls_end_reason CHECK (end_reason IS NULL OR end_reason IN ('completed', 'no_answer', 'declined', 'cancelled', 'busy', 'network_error', 'failed')),
    CONSTRAINT chk_calls_active_started CHECK (status <> 'active' OR started_at IS NOT NULL),
    CONSTRAINT chk_calls_ended_after_started CHECK (ended_at IS NULL OR started_at IS NULL OR ended_at >= started_at),
    CONSTRAINT chk_calls_duration CHECK (duration_seconds IS NULL OR duration_seconds >= 0)
);

-- Call history of a user, of a channel, newest first.
CREATE INDEX IF NOT EXISTS idx_calls_caller_id ON nchat_calls(caller_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_calls_channel_id ON nchat_calls(channel_id, created_at DESC)
    WHERE channel_id IS NOT NULL;
-- Calls in progress (ringing or active) are few and looked up often.
CREATE INDEX IF NOT EXISTS idx_calls_ongoing ON nchat_calls(status, created_at)
    WHERE status IN ('ringing', 'active');

CREATE TABLE IF NOT EXISTS nchat_call_participants (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    call_id UUID NOT NULL,
    user_id UUID NOT NULL,
    status TEXT NOT NULL DEFAULT 'invited',
    joined_at TIMESTAMP WITH TIME ZONE,
    left_at TIMESTAMP WITH TIME ZONE,
    is_muted BOOLEAN NOT NULL DEFAULT FALSE,
    is_video_enabled BOOLEAN NOT NULL DEFAULT FALSE,
    is_screen_sharing BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_call_participants_pkey PRIMARY KEY (id),
    CONSTRAINT fk_call_participants_call FOREIGN KEY (call_id)
        REFERENCES nchat_calls(id) ON DELETE CASCADE,
    CONSTRAINT fk_call_participants_user FOREIGN KEY (user_id)
        REFERENCES nchat_users(id) ON DELETE CASCADE,
    -- One row per call and user. Its index also serves lookups by call_id.
    CONSTRAINT uq_call_participants_call_user UNIQUE (call_id, user_id),
    CONSTRAINT chk_call_participants_status CHECK (status IN ('invited', 'ringing', 'joined', 'left', 'declined', 'missed')),
    CONSTRAINT chk_call_participants_left_after_joined CHECK (left_at IS NULL OR joined_at IS NULL OR left_at >= joined_at)
);

-- Calls of a user, newest first.
CREATE INDEX IF NOT EXISTS idx_call_participants_user_id ON nchat_call_participants(user_id, created_at DESC);
-- Who is in the call right now.
CREATE INDEX IF NOT EXISTS idx_call_participants_connected ON nchat_call_participants(call_id)
    WHERE joined_at IS NOT NULL AND left_at IS NULL;

CREATE TABLE IF NOT EXISTS nchat_call_events (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    call_id UUID NOT NULL,
    -- Who caused the event, NULL for system events. The log outlives the account.
    user_id UUID,
    event_type TEXT NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Append-only: rows are never updated, so there is no updated_at.
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    CONSTRAINT nchat_call_events_pkey PRIMARY KEY (id),
    CONSTRAINT fk_call_events_call FOREIGN KEY (call_id)
        REFERENCES nchat_calls(id) ON DELETE CASCADE,
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
