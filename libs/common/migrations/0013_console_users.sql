-- Admin console (issue 13): people who sign in, and their sessions. Owned by the api.

CREATE TABLE console_users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email       text NOT NULL UNIQUE,       -- lower-cased
    password_hash text NOT NULL,            -- argon2id, PHC string
    role        text NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    timezone    text,                       -- NULL: MAILFLEET_DEFAULT_TIMEZONE
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

-- A session is a random token in an HttpOnly cookie; only its sha256 is stored, so a
-- stolen database cannot be replayed as cookies. Idle and absolute timeouts are checked
-- against these two times; sign-out and disabling the user delete the rows.
CREATE TABLE console_sessions (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);

-- The console dashboard's "today" totals sum the batches finished since midnight.
CREATE INDEX IF NOT EXISTS tracker_batches_finished ON tracker_batches (finished_at);
