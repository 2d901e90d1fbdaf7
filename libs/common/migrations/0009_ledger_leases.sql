-- Issue 11 item 2: a send-ledger claim is a lease. Its owner renews `lease_until` while it
-- sends; another instance may take the row over only once `lease_until` has passed by the
-- DATABASE's clock (never a dispatcher's own clock). `claim` numbers the claims of a
-- batch: every takeover increments it, and progress, renewal and `finish` writes carry the
-- number they hold, so a slow former owner's late write matches no row.
ALTER TABLE send_ledger
    ADD COLUMN claim       bigint NOT NULL DEFAULT 1,
    ADD COLUMN lease_until timestamptz NOT NULL DEFAULT now();
