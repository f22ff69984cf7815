-- 016_live_streaming.down.sql
--
-- Removes the two streaming tables of 016 (indexes and constraints go with them).
-- No CASCADE on purpose: anything else depending on them stops the rollback.

DROP TABLE IF EXISTS nchat_stream_viewers;
DROP TABLE IF EXISTS nchat_streams;
