-- Issue 12 item 7: an append-only record of admin actions.
-- Who: actor_kind says what actor_id names (an API key's id, a console user's id, or
-- 'system'); actor_name is the key's or user's name at the time, kept for reading after a
-- key is revoked or a user removed. What: action ('api_key.create', 'suppression.remove',
-- ...). Target: target_kind + target_id. details: action-specific, never a secret.
CREATE TABLE audit_log (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_kind  text NOT NULL CHECK (actor_kind IN ('api_key', 'user', 'system')),
    actor_id    text NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 200),
    actor_name  text NOT NULL DEFAULT '' CHECK (length(actor_name) <= 200),
    action      text NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    target_kind text NOT NULL CHECK (length(target_kind) BETWEEN 1 AND 50),
    target_id   text NOT NULL CHECK (length(target_id) BETWEEN 1 AND 400),
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_id  text
);

-- GET /api/v1/audit pages newest first over (created_at, id).
CREATE INDEX audit_log_newest ON audit_log (created_at DESC, id DESC);
CREATE INDEX audit_log_target ON audit_log (target_kind, target_id, created_at DESC);

-- Append-only: no UPDATE, DELETE or TRUNCATE, whoever the database user is (a table
-- owner could drop the trigger, but not by accident, and not through the API).
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- Issue 12 item 9: an uploaded file is deleted when its import finishes (only the
-- rejected rows stay, for MAILFLEET_IMPORT_REJECTIONS_RETENTION_DAYS). The import request
-- outlives its file: the reference is cleared rather than blocking the delete.
ALTER TABLE import_requests ALTER COLUMN blob_id DROP NOT NULL;
ALTER TABLE import_requests DROP CONSTRAINT import_requests_blob_id_fkey;
ALTER TABLE import_requests ADD CONSTRAINT import_requests_blob_id_fkey
    FOREIGN KEY (blob_id) REFERENCES blobs (id) ON DELETE SET NULL;
-- The retention sweep finds old finished imports, and abandoned uploads, by time.
CREATE INDEX IF NOT EXISTS import_jobs_finished_at ON import_jobs (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS blobs_incomplete ON blobs (created_at) WHERE NOT complete;
