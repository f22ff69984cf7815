-- 015_voice_calls.down.sql
--
-- Removes the three call tables of 015 (indexes and constraints go with them).
-- No CASCADE on purpose: anything else depending on them stops the rollback.

DROP TABLE IF EXISTS nchat_call_events;
DROP TABLE IF EXISTS nchat_call_participants;
DROP TABLE IF EXISTS nchat_calls;
