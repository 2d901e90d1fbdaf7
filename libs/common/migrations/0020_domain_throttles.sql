-- Per-domain throttles (issue 14 item 4), owned by the dispatcher.
--
-- throttle_windows: how many recipients each scope used in one fixed window. A scope is
-- `<provider>:<group>` (windows of a minute and an hour) or `warmup:<from domain>` (a day).
-- Every dispatcher reserves in one transaction, rows locked in a fixed order, so the
-- count of a window never passes its limit whatever the number of instances.
CREATE TABLE throttle_windows (
    scope         text NOT NULL,
    window_s      integer NOT NULL CHECK (window_s > 0),
    window_start  timestamptz NOT NULL,
    used          integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (scope, window_s, window_start)
);
CREATE INDEX throttle_windows_start ON throttle_windows (window_start);

-- The first day (UTC) each From domain sent: day 0 of its warm-up ramp. Recorded whether
-- or not a ramp is configured, so that one enabled later counts from the true first day.
CREATE TABLE sending_domains (
    domain          text PRIMARY KEY,
    first_send_day  date NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
