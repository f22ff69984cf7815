-- 013_e2ee_system.down.sql
--
-- Removes the seven E2EE tables of 013 (their indexes, constraints and serial sequences go with
-- them). Runs after 014 down, which removes the view, the claim function and the foreign key from
-- nchat_messages. No CASCADE on purpose: if anything still depends on these tables the rollback
-- stops instead of silently dropping it.

DROP TABLE IF EXISTS nchat_e2ee_audit_log;
DROP TABLE IF EXISTS nchat_safety_numbers;
DROP TABLE IF EXISTS nchat_signal_sessions;
DROP TABLE IF EXISTS nchat_one_time_prekeys;
DROP TABLE IF EXISTS nchat_signed_prekeys;
DROP TABLE IF EXISTS nchat_identity_keys;
DROP TABLE IF EXISTS nchat_user_master_keys;
