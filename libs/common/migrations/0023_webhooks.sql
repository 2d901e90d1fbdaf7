-- Outbound webhooks (issue 18 item 3), owned by services/webhooks; the API writes the
-- endpoints (admin configuration) and reads the delivery log.
CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url              text NOT NULL CHECK (length(url) <= 2000),
    description      text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    event_types      text[] NOT NULL,
    -- The signing secret, sealed with a key derived from MAILFLEET_SECRET_KEY (libs/webhooks).
    secret_sealed    bytea NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    -- Why it is disabled: 'admin', or 'failing' when the sender gave up on it.
    disabled_reason  text,
    disabled_at      timestamptz,
    failure_streak   integer NOT NULL DEFAULT 0,
    last_success_at  timestamptz,
    last_failure_at  timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);

-- The durable outbox and the delivery log in one: a row per (endpoint, event), written by
-- the consumer before it commits its Kafka offset, delivered by the sender loop.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq              bigint GENERATED ALWAYS AS IDENTITY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL,        -- sent to the receiver, for its deduplication
    event_type       text NOT NULL,
    -- Deliveries with the same key go to one endpoint in order (the campaign id); NULL: none.
    order_key        text,
    payload          bytea NOT NULL,       -- the exact body, signed at each attempt
    status           text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    leased_until     timestamptz,
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);

-- The sender finds each queue's head by a loose index scan over this index (one probe per
-- (endpoint, campaign) queue, not a scan of what waits behind the heads)...
CREATE INDEX webhook_deliveries_queues ON webhook_deliveries (endpoint_id, order_key, seq)
    WHERE status = 'pending' AND order_key IS NOT NULL;
-- ...and deliveries with no order to keep by this one.
CREATE INDEX webhook_deliveries_unordered ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending' AND order_key IS NULL;
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
