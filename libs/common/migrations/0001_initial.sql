-- mailfleet schema. Each block names the service that owns (writes) its tables;
-- other services only read what the design allows (read models, claim checks).

-- ===== api =====
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    key_prefix  text NOT NULL,              -- first characters, to tell keys apart in lists
    key_hash    bytea NOT NULL UNIQUE,      -- sha256 of the key: the key itself is never stored
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz
);

CREATE TABLE lists (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaigns (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    subject     text NOT NULL,
    html        text NOT NULL,
    text        text,
    from_email  text NOT NULL,
    from_name   text,
    list_id     uuid NOT NULL REFERENCES lists (id),
    provider    text NOT NULL,
    status      text NOT NULL DEFAULT 'draft' CHECK (status IN
                ('draft', 'scheduled', 'in_progress', 'paused', 'completed', 'failed', 'cancelled')),
    send_at     timestamptz,
    timezone    text,
    schedule_revision int NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);
CREATE INDEX campaigns_status ON campaigns (status);

-- Uploaded files, stored in chunks: the claim-check store behind import.requested.
CREATE TABLE blobs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    filename    text NOT NULL,
    content_type text,
    size_bytes  bigint NOT NULL DEFAULT 0,
    complete    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE blob_chunks (
    blob_id     uuid NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
    seq         int NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (blob_id, seq)
);

-- An import as the API accepted it; the importer's import_jobs row tells how it went.
CREATE TABLE import_requests (
    id          uuid PRIMARY KEY,
    list_id     uuid NOT NULL REFERENCES lists (id),
    blob_id     uuid NOT NULL REFERENCES blobs (id),
    filename    text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);

-- ===== importer =====
CREATE TABLE recipients (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    list_id     uuid NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    email       text NOT NULL,
    fields      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The importer stores addresses normalised (lower case), so this is the dedupe key.
CREATE UNIQUE INDEX recipients_list_email ON recipients (list_id, email);

CREATE TABLE import_jobs (
    id          uuid PRIMARY KEY,
    list_id     uuid NOT NULL,
    status      text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    rows_total  bigint NOT NULL DEFAULT 0,
    rows_imported bigint NOT NULL DEFAULT 0,
    rows_updated bigint NOT NULL DEFAULT 0,
    rows_rejected bigint NOT NULL DEFAULT 0,
    rows_duplicate bigint NOT NULL DEFAULT 0,
    rows_suppressed bigint NOT NULL DEFAULT 0,
    error       text,
    started_at  timestamptz,
    finished_at timestamptz
);

CREATE TABLE import_rejections (
    import_id   uuid NOT NULL,
    line        bigint NOT NULL,
    reason      text NOT NULL,
    raw         text NOT NULL,
    PRIMARY KEY (import_id, line)
);

-- ===== scheduler =====
CREATE TABLE schedules (
    campaign_id uuid PRIMARY KEY,
    send_at     timestamptz NOT NULL,
    timezone    text NOT NULL,
    revision    int NOT NULL,
    claimed_at  timestamptz
);
CREATE INDEX schedules_due ON schedules (send_at) WHERE claimed_at IS NULL;

-- Campaign content frozen when the campaign starts: later edits never reach a running send.
CREATE TABLE content_snapshots (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    campaign_id uuid NOT NULL,
    subject     text NOT NULL,
    html        text NOT NULL,
    text        text,
    from_email  text NOT NULL,
    from_name   text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaign_plans (
    campaign_id uuid PRIMARY KEY,
    content_id  uuid NOT NULL REFERENCES content_snapshots (id),
    provider    text NOT NULL,
    audience_total bigint NOT NULL,
    suppressed_total bigint NOT NULL,
    batches_total int NOT NULL,
    planned_at  timestamptz NOT NULL DEFAULT now()
);

-- The batch plan: which recipients make up each batch. Kept so that a lost broker
-- loses nothing: batches the tracker has not accounted for are emitted again.
CREATE TABLE batch_plans (
    batch_id    text PRIMARY KEY,
    campaign_id uuid NOT NULL,
    batch_no    int NOT NULL,
    recipient_ids bigint[] NOT NULL,
    emitted     int NOT NULL DEFAULT 0,
    last_emitted_at timestamptz
);
CREATE INDEX batch_plans_campaign ON batch_plans (campaign_id, batch_no);

-- ===== dispatcher =====
-- What each batch's provider accepted. 'sending' rows whose dispatcher died are the
-- recipients whose outcome is unknown.
CREATE TABLE send_ledger (
    batch_id    text PRIMARY KEY,
    campaign_id uuid NOT NULL,
    state       text NOT NULL CHECK (state IN ('sending', 'done')),
    owner       text NOT NULL,
    result      jsonb,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- ===== tracker =====
CREATE TABLE tracker_batches (
    batch_id    text PRIMARY KEY,
    campaign_id uuid NOT NULL,
    recipients  int NOT NULL,
    folded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tracker_batches_campaign ON tracker_batches (campaign_id);

CREATE TABLE deliveries (
    campaign_id uuid NOT NULL,
    recipient_id bigint NOT NULL,
    email       text NOT NULL,
    status      text NOT NULL,
    message_id  text,
    error       text,
    batch_id    text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, recipient_id)
);

CREATE TABLE campaign_stats (
    campaign_id uuid PRIMARY KEY,
    audience_total bigint NOT NULL DEFAULT 0,
    batches_total int NOT NULL DEFAULT 0,
    batches_done int NOT NULL DEFAULT 0,
    sent        bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    suppressed  bigint NOT NULL DEFAULT 0,
    invalid     bigint NOT NULL DEFAULT 0,
    unknown     bigint NOT NULL DEFAULT 0,
    cancelled   bigint NOT NULL DEFAULT 0,
    first_result_at timestamptz,
    last_result_at timestamptz
);

CREATE TABLE suppressions (
    email       text PRIMARY KEY,           -- lower-cased
    reason      text NOT NULL CHECK (reason IN ('unsubscribe', 'bounce', 'spamreport', 'manual')),
    source      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
