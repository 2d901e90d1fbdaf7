-- Issue 15 items 1 and 5: segments (saved filters over recipients), and the export and
-- erasure of one person's data.

-- ===== api: segments =====
-- A segment is a saved filter (JSON, see libs/common/segments.py). The filter is stored as
-- the client sent it (after validation); it is compiled to SQL each time it is used, so
-- a change to the compiler applies to every saved segment.
CREATE TABLE segments (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text CHECK (length(description) <= 2000),
    filter      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX segments_newest ON segments (created_at DESC, id DESC);

-- Engagement reads the delivery log by the time of the first open, click or soft bounce.
-- Partial: only rows with that event are indexed, so the tracker's insert of every
-- delivery pays nothing; its update of a row's first open or click adds one entry. The
-- address and campaign are included, so that "opened within N days" and "opened campaign
-- C" are index-only scans of the opens, not reads of the whole log (or of all of C's rows).
-- ("Received within N days" reads the log by campaign, through its primary key.)
CREATE INDEX IF NOT EXISTS deliveries_opened_at ON deliveries (opened_at)
    INCLUDE (campaign_id, email) WHERE opened_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_clicked_at ON deliveries (clicked_at)
    INCLUDE (campaign_id, email) WHERE clicked_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_soft_bounced_at ON deliveries (bounced_at)
    INCLUDE (campaign_id, email) WHERE bounce_type = 'soft';

-- ===== erasure =====
-- An erased person is remembered only as a keyed hash in the suppression list:
-- email = 'erased:<bucket>:' || hex(HMAC-SHA256(key, address)), reason 'erased'. The key is derived
-- from MAILFLEET_SECRET_KEY and never stored in the database; without it the hashes
-- cannot be tested against a list of guessed addresses.
ALTER TABLE suppressions DROP CONSTRAINT IF EXISTS suppressions_reason_check;
ALTER TABLE suppressions ADD CONSTRAINT suppressions_reason_check
    CHECK (reason IN ('unsubscribe', 'bounce', 'spamreport', 'manual', 'erased'));

-- The token is 'erased:<bucket>:<HMAC-SHA256>', computed by these functions with core
-- functions only (no pgcrypto). HMAC: ipad and opad are the key padded to 64 bytes XOR
-- 0x36 and 0x5c, computed by the caller (libs/common/suppressions.py) and sent as
-- parameters. The bucket (4 hex digits) is 16 bits of `hashtextextended` seeded from the
-- key: cheap enough for the importer to compute for every row of a file, so that it pays
-- the HMAC (two sha256 calls, ~100 times dearer) only for the rare rows whose bucket holds
-- an erased address. Sixteen bits of a keyed hash say nothing about who was erased.
CREATE FUNCTION mailfleet_erased_bucket(address text, seed bigint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 1 AS $$
    SELECT lpad(to_hex(hashtextextended(address, seed) & 65535), 4, '0')
$$;

CREATE FUNCTION mailfleet_erased_token(address text, ipad bytea, opad bytea, seed bigint)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 1000 AS $$
    SELECT 'erased:' || mailfleet_erased_bucket(address, seed) || ':'
        || encode(sha256(opad || sha256(ipad || convert_to(address, 'UTF8'))), 'hex')
$$;

-- The audit log stays append-only, with one exception: an erasure replaces the address in
-- the records that name it (target, details, actor name) by its erased token, inside the
-- erasure's transaction, which says so with `SET LOCAL mailfleet.erasure = 'on'`. Who
-- acted, what they did and when never change; DELETE and TRUNCATE are still refused.
CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND current_setting('mailfleet.erasure', true) = 'on'
       AND NEW.id = OLD.id AND NEW.created_at = OLD.created_at
       AND NEW.actor_kind = OLD.actor_kind AND NEW.actor_id = OLD.actor_id
       AND NEW.action = OLD.action AND NEW.target_kind = OLD.target_kind
       AND NEW.request_id IS NOT DISTINCT FROM OLD.request_id THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
