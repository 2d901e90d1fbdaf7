-- Soft bounces in a row per address (issue 14 item 2): the tracker suppresses an address
-- once MAILFLEET_SOFT_BOUNCE_LIMIT soft bounces came with no delivery, open or click between
-- them. Only addresses with a running streak have a row: a delivery deletes it.
CREATE TABLE soft_bounce_streaks (
    email       text PRIMARY KEY,           -- lower-cased
    in_a_row    integer NOT NULL CHECK (in_a_row > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
