-- What each dispatcher instance sees of its providers (issue 13, Settings -> Provider
-- status): circuit breaker, rate limit and last error. Owned by the dispatcher, which
-- upserts its rows every few seconds; the console only reads it and nothing decides on it.
-- A row whose updated_at is over a minute old belongs to an instance that went silent.
CREATE TABLE provider_status (
    instance          text NOT NULL,
    provider          text NOT NULL,
    breaker_state     text NOT NULL CHECK (breaker_state IN ('closed', 'open', 'half_open')),
    breaker_reason    text,
    rate_limit_per_s  double precision NOT NULL,  -- this instance's share; 0 = unlimited
    last_error        text,
    last_error_at     timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, provider)
);
