-- ===== reputation guard (issue 14 item 5) =====
-- Per-campaign thresholds of the guard (`services/guard`), written by the API on campaign
-- create/update: a JSON object whose keys override the global MAILFLEET_GUARD_* settings
-- (see services/guard/rules.py); NULL: the global settings.
ALTER TABLE campaigns
    ADD COLUMN guard jsonb,
    -- When an admin last resumed a campaign the guard had paused: the guard holds off for
    -- MAILFLEET_GUARD_HOLD_OFF_SECONDS after it (read by the guard, written by the API).
    ADD COLUMN guard_resumed_at timestamptz;
-- The guard rebuilds its windows at start from the provider events of the last minutes.
CREATE INDEX IF NOT EXISTS delivery_events_received ON delivery_events (received_at);
