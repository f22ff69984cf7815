-- 015_voice_calls.down.sql
--
-- Removes the three call tables of 015 (indexes, constraints, triggers and policies go with them).
-- The row-level security policies of nchat_calls and nchat_call_events read the other call tables,
-- so they go first. No CASCADE on purpose: anything else depending on them stops the rollback.

DO $$
BEGIN
    IF to_regclass('nchat_call_events') IS NOT NULL THEN
        DROP POLICY IF EXISTS nchat_call_events_owner ON nchat_call_events;
    END IF;
    IF to_regclass('nchat_calls') IS NOT NULL THEN
        DROP POLICY IF EXISTS nchat_calls_owner ON nchat_calls;
    END IF;
END
$$;

DROP TABLE IF EXISTS nchat_call_events;
DROP TABLE IF EXISTS nchat_call_participants;
DROP TABLE IF EXISTS nchat_calls;
