-- ===== tracker: timings, provider events, campaign outcome =====

-- Each folded batch keeps its own timings and counts: the campaign timeline is a cheap
-- aggregate over these rows instead of over every delivery.
ALTER TABLE tracker_batches
    ADD COLUMN batch_no    int,
    ADD COLUMN sent        int NOT NULL DEFAULT 0,
    ADD COLUMN failed      int NOT NULL DEFAULT 0,
    ADD COLUMN started_at  timestamptz,
    ADD COLUMN finished_at timestamptz,
    ADD COLUMN replayed    boolean NOT NULL DEFAULT false;

-- What the provider told us about each message after it was sent. First-time columns
-- (delivered_at, opened_at, ...) are what the campaign's unique counters count.
ALTER TABLE deliveries
    ADD COLUMN sent_at          timestamptz,
    ADD COLUMN delivered_at     timestamptz,
    ADD COLUMN bounced_at       timestamptz,
    ADD COLUMN bounce_type      text,
    ADD COLUMN dropped_at       timestamptz,
    ADD COLUMN deferred_count   int NOT NULL DEFAULT 0,
    ADD COLUMN opened_at        timestamptz,
    ADD COLUMN open_count       int NOT NULL DEFAULT 0,
    ADD COLUMN clicked_at       timestamptz,
    ADD COLUMN click_count      int NOT NULL DEFAULT 0,
    ADD COLUMN unsubscribed_at  timestamptz,
    ADD COLUMN spam_reported_at timestamptz,
    ADD COLUMN last_event       text,
    ADD COLUMN last_event_at    timestamptz;
-- Provider events without our correlation ids are matched by the provider's message id.
CREATE INDEX deliveries_message_id ON deliveries (message_id) WHERE message_id IS NOT NULL;

ALTER TABLE campaign_stats
    ADD COLUMN delivered        bigint NOT NULL DEFAULT 0,
    ADD COLUMN bounced          bigint NOT NULL DEFAULT 0,
    ADD COLUMN dropped          bigint NOT NULL DEFAULT 0,
    ADD COLUMN deferred         bigint NOT NULL DEFAULT 0,
    ADD COLUMN opens            bigint NOT NULL DEFAULT 0,
    ADD COLUMN unique_opens     bigint NOT NULL DEFAULT 0,
    ADD COLUMN clicks           bigint NOT NULL DEFAULT 0,
    ADD COLUMN unique_clicks    bigint NOT NULL DEFAULT 0,
    ADD COLUMN spam_reports     bigint NOT NULL DEFAULT 0,
    ADD COLUMN unsubscribes     bigint NOT NULL DEFAULT 0,
    ADD COLUMN send_started_at  timestamptz,   -- earliest batch start reported by dispatchers
    ADD COLUMN send_finished_at timestamptz,   -- latest batch end reported by dispatchers
    ADD COLUMN finished_at      timestamptz,   -- when the tracker set the final status
    ADD COLUMN outcome          text CHECK (outcome IN ('completed', 'failed')),
    -- NULL while the final campaign.status event is still to be published (an outbox).
    ADD COLUMN outcome_published_at timestamptz;
CREATE INDEX campaign_stats_unpublished ON campaign_stats (campaign_id)
    WHERE outcome IS NOT NULL AND outcome_published_at IS NULL;

-- Every provider event once: the primary key is the dedupe of redelivered webhooks.
CREATE TABLE delivery_events (
    event_id    text PRIMARY KEY,
    campaign_id uuid,
    recipient_id bigint,
    email       text NOT NULL,
    event       text NOT NULL,
    provider    text NOT NULL,
    provider_message_id text,
    occurred_at timestamptz NOT NULL,
    matched     boolean NOT NULL,          -- false: no delivery of ours to attach it to
    detail      jsonb NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_events_recipient ON delivery_events (campaign_id, recipient_id);
