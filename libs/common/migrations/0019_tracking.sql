-- ===== own open and click tracking (issue 14 item 1) =====

-- On by default; an admin may switch it off per campaign while it is editable.
ALTER TABLE campaigns ADD COLUMN tracking boolean NOT NULL DEFAULT true;

-- Machine hits (Apple Mail Privacy Protection prefetches, link scanners) count in the
-- totals (opens, clicks) and here, never in the unique counters.
ALTER TABLE campaign_stats
    ADD COLUMN machine_opens  bigint NOT NULL DEFAULT 0,
    ADD COLUMN machine_clicks bigint NOT NULL DEFAULT 0;

-- Our own hits may arrive before the delivery they are about is folded (results and events
-- are separate consumers): the results fold picks them up by this index.
CREATE INDEX delivery_events_unmatched_own ON delivery_events (campaign_id, recipient_id)
    WHERE NOT matched AND provider = 'mailfleet';
