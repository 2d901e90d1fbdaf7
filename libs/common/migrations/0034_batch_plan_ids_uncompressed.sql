-- A plan's recipient ids are stored out of line but not compressed (issue 16, item 4).
-- pglz shrank each 8 KB array of a 1M-recipient plan by about a third, and took 0.7 s to
-- do it, inside the plan's single transaction, before the first batch can go. The table
-- is emptied by compaction once the campaign is done.
ALTER TABLE batch_plans ALTER COLUMN recipient_ids SET STORAGE EXTERNAL;
