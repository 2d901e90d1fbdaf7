-- The scheduler asks two things of a campaign's accounted batches on every emit tick
-- (services/scheduler/repository.py, `_due_rows`):
--   * has any been folded lately (a sign of life that holds back a re-emission)?
--   * has one that finished well after a batch's ledger `done` been folded (then that
--     batch's result was lost in transport, and is replayed at once)?
-- With only (campaign_id), each question read every accounted batch of the campaign, once
-- per candidate batch: 21 s per tick at 10M recipients (20k batches). With these, each is
-- one index descent. Both lead with campaign_id, so the old index goes.
CREATE INDEX IF NOT EXISTS tracker_batches_campaign_folded
    ON tracker_batches (campaign_id, folded_at);
CREATE INDEX IF NOT EXISTS tracker_batches_campaign_finished
    ON tracker_batches (campaign_id, finished_at);
DROP INDEX IF EXISTS tracker_batches_campaign;

-- Batches the tracker has accounted for, as the scheduler last saw (it marks them at the
-- start of each emit tick): the due query reads only the others, through this partial
-- index, instead of probing `tracker_batches` for every batch of the plan on every tick
-- (20k probes twice a second at 10M recipients: a third of PostgreSQL's CPU per email).
ALTER TABLE batch_plans ADD COLUMN IF NOT EXISTS accounted_at timestamptz;
UPDATE batch_plans b SET accounted_at = t.folded_at
  FROM tracker_batches t WHERE t.batch_id = b.batch_id AND b.accounted_at IS NULL;
CREATE INDEX IF NOT EXISTS batch_plans_unaccounted
    ON batch_plans (campaign_id, batch_no) WHERE accounted_at IS NULL;
CREATE INDEX IF NOT EXISTS batch_plans_in_flight
    ON batch_plans (batch_id) WHERE accounted_at IS NULL AND emitted > 0;
