-- Transactional messages (issue 18 item 1).
--
-- message_requests: every message accepted (by the API, or by a dispatcher reading
-- `message.requested` with an idempotency key), with the key and a SHA-256 of its
-- canonical body. A key is unique while it is younger than 24 h: the same key with the
-- same body is the same message (nothing is sent again), with another body it is refused
-- (409). Written through libs/common/idempotency.py only (the API and the dispatcher).
CREATE TABLE message_requests (
    message_id       uuid PRIMARY KEY,
    idempotency_key  text UNIQUE CHECK (length(idempotency_key) <= 255),
    body_hash        bytea NOT NULL,
    recipient        text NOT NULL,
    category         text,
    source           text NOT NULL CHECK (source IN ('api', 'event')),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_requests_created ON message_requests (created_at);

-- messages: each message's outcome, folded by the tracker from `delivery.result`
-- (message_id set) exactly once (gated by batch id like campaign batches). Its provider
-- events are the delivery_events rows whose campaign_id is the message id.
CREATE TABLE messages (
    message_id           uuid PRIMARY KEY,
    recipient            text NOT NULL,
    category             text,
    status               text NOT NULL,
    provider             text NOT NULL,
    provider_message_id  text,
    error                text,
    requested_at         timestamptz,
    sent_at              timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now()
);
