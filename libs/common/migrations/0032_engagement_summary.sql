-- Issue 15 item 1: segment counts by engagement under 1 s on 1M recipients.
-- One row per address with the last time it received, opened, clicked or soft-bounced
-- anything, so that "opened within 30 days" or "never opened" reads one row per person
-- instead of every delivery of every campaign (libs/stats/engagement.py says who keeps
-- what, and libs/common/segments.py how a filter reads it).
CREATE TABLE engagement_summary (
    email                text PRIMARY KEY,
    last_sent_at         timestamptz,
    last_opened_at       timestamptz,
    last_clicked_at      timestamptz,
    last_soft_bounced_at timestamptz
);
CREATE INDEX engagement_summary_sent ON engagement_summary (last_sent_at)
    WHERE last_sent_at IS NOT NULL;
CREATE INDEX engagement_summary_opened ON engagement_summary (last_opened_at)
    WHERE last_opened_at IS NOT NULL;
CREATE INDEX engagement_summary_clicked ON engagement_summary (last_clicked_at)
    WHERE last_clicked_at IS NOT NULL;
CREATE INDEX engagement_summary_soft_bounced ON engagement_summary (last_soft_bounced_at)
    WHERE last_soft_bounced_at IS NOT NULL;

-- Campaigns whose sent deliveries are in the summary (the tracker's job adds a campaign
-- once it is over and every batch is accounted for). A filter reads the sends of the
-- others from the delivery log itself.
CREATE TABLE engagement_summarised (
    campaign_id uuid PRIMARY KEY,
    summarised_at timestamptz NOT NULL DEFAULT now()
);

-- Opens, clicks and soft bounces (rare next to sends, each an UPDATE of one delivery, or
-- a row inserted with them) reach the summary as they are written, by trigger: every
-- writer of the delivery log keeps it exact without knowing about it. A send becomes
-- `sent` late (a provider's evidence for an `unknown`) by UPDATE too. The insert of each
-- new delivery, millions per campaign, fires nothing: the WHEN clauses filter it out.
CREATE FUNCTION engagement_from_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO engagement_summary AS e
           (email, last_sent_at, last_opened_at, last_clicked_at, last_soft_bounced_at)
    VALUES (NEW.email,
            CASE WHEN NEW.status = 'sent' THEN NEW.sent_at END,
            NEW.opened_at,
            NEW.clicked_at,
            CASE WHEN NEW.bounce_type = 'soft' THEN NEW.bounced_at END)
    ON CONFLICT (email) DO UPDATE SET
        last_sent_at = greatest(e.last_sent_at, EXCLUDED.last_sent_at),
        last_opened_at = greatest(e.last_opened_at, EXCLUDED.last_opened_at),
        last_clicked_at = greatest(e.last_clicked_at, EXCLUDED.last_clicked_at),
        last_soft_bounced_at = greatest(e.last_soft_bounced_at, EXCLUDED.last_soft_bounced_at);
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_engagement_insert AFTER INSERT ON deliveries
    FOR EACH ROW
    WHEN (NEW.opened_at IS NOT NULL OR NEW.clicked_at IS NOT NULL
          OR (NEW.bounced_at IS NOT NULL AND NEW.bounce_type = 'soft'))
    EXECUTE FUNCTION engagement_from_delivery();

CREATE TRIGGER deliveries_engagement_update AFTER UPDATE ON deliveries
    FOR EACH ROW
    WHEN (NEW.email = OLD.email AND (
          NEW.opened_at IS DISTINCT FROM OLD.opened_at
          OR NEW.clicked_at IS DISTINCT FROM OLD.clicked_at
          OR NEW.bounced_at IS DISTINCT FROM OLD.bounced_at
          OR NEW.bounce_type IS DISTINCT FROM OLD.bounce_type
          OR (NEW.status = 'sent' AND OLD.status IS DISTINCT FROM 'sent')))
    EXECUTE FUNCTION engagement_from_delivery();

-- Existing installs: what the delivery log holds now. Campaigns are marked summarised by
-- the tracker's job, as new ones are (it only takes the latest of each time again).
INSERT INTO engagement_summary (email, last_sent_at, last_opened_at, last_clicked_at,
                                last_soft_bounced_at)
SELECT email,
       max(sent_at) FILTER (WHERE status = 'sent'),
       max(opened_at), max(clicked_at),
       max(bounced_at) FILTER (WHERE bounce_type = 'soft')
  FROM deliveries GROUP BY email;
