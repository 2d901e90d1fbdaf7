-- Issue 17 item 4: a campaign's own rate cap, on top of its provider's limit.
--
-- max_per_hour: recipients the campaign may send in an hour, over every dispatcher (NULL:
-- no cap). Dispatchers count it in `throttle_windows` (scope `campaign:<id>`, a minute
-- window of ceil(cap / 60) and an hour window of cap), like the per-domain throttles; it
-- may change while the campaign sends and applies from the next reservation.
ALTER TABLE campaigns
    ADD COLUMN max_per_hour integer CHECK (max_per_hour BETWEEN 1 AND 10000000);
