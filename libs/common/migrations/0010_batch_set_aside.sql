-- Issue 11, item 8: a batch whose `batch.ready` event cannot be published (over the topic's
-- max.message.bytes even after byte-sized planning) is set aside with its reason, instead
-- of being retried for ever in front of every other campaign's batches.
ALTER TABLE batch_plans
    ADD COLUMN set_aside_reason text,
    ADD COLUMN set_aside_at timestamptz;

-- Issue 11, item 10: when an emitted batch may be expected to show progress, given the
-- rate limit's backlog ahead of it at emission (recipients of batches emitted and not yet
-- accounted for, of the same provider, divided by the rate). Re-emission waits for it.
ALTER TABLE batch_plans ADD COLUMN expected_by timestamptz;
