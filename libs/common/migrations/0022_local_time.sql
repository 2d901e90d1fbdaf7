-- Issue 17, items 2 and 3: local-time delivery and send windows.

-- The zone of a list's recipients who have no (valid) `timezone` merge field.
ALTER TABLE lists ADD COLUMN default_timezone text;

-- A local-time schedule: `local_send_at` is the wall time (no zone) each recipient gets
-- it at, in their own zone; `send_at` is then the earliest instant any zone reaches it.
-- `send_window`: {"start": "08:00", "end": "20:00", "days": ["mon", ...]} in the
-- recipient's local time.
ALTER TABLE campaigns
    ADD COLUMN local_time boolean NOT NULL DEFAULT false,
    ADD COLUMN local_send_at timestamp,
    ADD COLUMN send_window jsonb;

-- Recipients whose `timezone` field named no known zone (they fell back to the default).
ALTER TABLE campaign_plans ADD COLUMN invalid_timezones bigint NOT NULL DEFAULT 0;

-- A zoned plan (local time or a window): each batch holds the recipients of one zone and
-- is first emitted at `due_at` (moved to the window's next opening when it falls outside).
-- NULL for both on a plain plan: due at once.
ALTER TABLE batch_plans
    ADD COLUMN zone text,
    ADD COLUMN due_at timestamptz;

CREATE INDEX batch_plans_waiting ON batch_plans (campaign_id, due_at) WHERE emitted = 0;
