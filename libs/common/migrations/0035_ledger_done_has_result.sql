-- A ledger row marked done carries the result it replays (the dispatcher answers a batch
-- it already sent with that result, and never sends it again). Both writers of 'done'
-- set it; the constraint makes it a property of the table, not of the code that writes it.
ALTER TABLE send_ledger
    ADD CONSTRAINT send_ledger_done_has_result CHECK (state <> 'done' OR result IS NOT NULL);
