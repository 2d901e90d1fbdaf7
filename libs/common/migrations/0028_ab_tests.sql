-- Issue 17, item 1: A/B tests.

-- A campaign's A/B test (set through the API while the campaign is a draft or scheduled).
-- `test_share` of the sendable audience, chosen by a hash of each recipient id seeded with
-- `seed` (reproducible), is split evenly among the variants; the rest (the remainder) is
-- held until a winner is stored, then gets the winner's content.
-- `winner`, `decided_at`, `decided_by` are written once, by a compare-and-set on
-- `winner IS NULL`: by the scheduler after `wait_seconds` from `test_started_at` (by the
-- metric), or by an admin through the API before that.
CREATE TABLE ab_tests (
    campaign_id  uuid PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    test_share   double precision NOT NULL CHECK (test_share > 0 AND test_share <= 1),
    seed         bigint NOT NULL,
    wait_seconds integer NOT NULL CHECK (wait_seconds >= 0),
    metric       text NOT NULL CHECK (metric IN ('open', 'click', 'manual')),
    -- The scheduler's clock when it planned the test (the wait counts from there).
    test_started_at timestamptz,
    winner       text,
    decided_at   timestamptz,
    decided_by   text,
    decision_reason text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ab_tests_undecided ON ab_tests (test_started_at) WHERE winner IS NULL;

-- The variants (2 to 5, named A..E): what each overrides of the campaign's content.
CREATE TABLE ab_variants (
    campaign_id uuid NOT NULL REFERENCES ab_tests (campaign_id) ON DELETE CASCADE,
    variant     text NOT NULL CHECK (variant IN ('A', 'B', 'C', 'D', 'E')),
    subject     text,
    from_name   text,
    html        text,
    text        text,
    -- The frozen content of this variant (written by the scheduler when it plans).
    content_id  uuid,
    PRIMARY KEY (campaign_id, variant)
);

-- A batch of an A/B campaign's test group carries its variant; a batch of the remainder
-- has none, and is not emitted until the campaign's test has a winner.
ALTER TABLE batch_plans ADD COLUMN variant text;

-- The variant each recipient was sent (the tracker, from `delivery.result`).
ALTER TABLE deliveries ADD COLUMN variant text;

-- The tracker's counters per variant (the test group only), moved in the same transaction
-- as campaign_stats, behind the same batch and event gates.
CREATE TABLE campaign_variant_stats (
    campaign_id   uuid NOT NULL,
    variant       text NOT NULL,
    recipients    bigint NOT NULL DEFAULT 0,
    sent          bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    invalid       bigint NOT NULL DEFAULT 0,
    unknown       bigint NOT NULL DEFAULT 0,
    cancelled     bigint NOT NULL DEFAULT 0,
    suppressed    bigint NOT NULL DEFAULT 0,
    delivered     bigint NOT NULL DEFAULT 0,
    bounced       bigint NOT NULL DEFAULT 0,
    dropped       bigint NOT NULL DEFAULT 0,
    deferred      bigint NOT NULL DEFAULT 0,
    opens         bigint NOT NULL DEFAULT 0,
    unique_opens  bigint NOT NULL DEFAULT 0,
    clicks        bigint NOT NULL DEFAULT 0,
    unique_clicks bigint NOT NULL DEFAULT 0,
    spam_reports  bigint NOT NULL DEFAULT 0,
    unsubscribes  bigint NOT NULL DEFAULT 0,
    machine_opens bigint NOT NULL DEFAULT 0,
    machine_clicks bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, variant)
);
