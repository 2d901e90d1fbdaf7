-- ===== the delivery log and provider events, partitioned by month (issue 16 item 2) =====
--
-- `deliveries` and `delivery_events` become RANGE partitions on `log_month`: the first day
-- (UTC) of the month their CAMPAIGN was first seen by the tracker, fixed once for good in
-- `delivery_log_months`. Why the campaign's month and not the row's own time: the unique
-- keys must hold the partition key, and the tracker's gates need them to stay exact.
--   * deliveries: (campaign_id, recipient_id, log_month); a campaign has ONE month, so a
--     recipient reported twice still conflicts (same partition).
--   * delivery_events: (event_id, log_month); an event about a delivery is stored in its
--     campaign's month, so a redelivered copy (even a month later, e.g. an unsubscribe link
--     clicked again) meets the first copy there. An event matched to no delivery is stored
--     in the month it was received: it moves no counter, so a duplicate of it is harmless.
-- Retention drops whole months (services/tracker/retention.py); campaign_stats are
-- counters kept apart, so dropping the log changes no aggregate.
--
-- Existing install (live migration): no row is copied. Each old table is renamed to
-- `*_legacy`, gains `log_month` with a constant default (metadata only, no rewrite) and is
-- ATTACHed as the partition below the current month. The costs, all inside this one
-- transaction (the tables are locked ACCESS EXCLUSIVE throughout, readers included):
--   * one unique index build over each old table (the new key with log_month), and one
--     scan of each to check the partition bound; roughly 5-10 s per 10M rows here;
--   * one pass over campaign_stats and messages (small) to pin old campaigns to `legacy`.
-- Run it in a quiet window; the tracker waits (the broker keeps what it did not fold).
-- Fresh install: the legacy partitions are empty and dropped at once.

CREATE TABLE delivery_log_months (
    campaign_id uuid PRIMARY KEY,             -- a campaign, or a transactional message id
    log_month   date NOT NULL
);
-- What was logged before this migration lives in the legacy partitions.
INSERT INTO delivery_log_months (campaign_id, log_month)
SELECT campaign_id, DATE '1970-01-01' FROM campaign_stats
ON CONFLICT DO NOTHING;
INSERT INTO delivery_log_months (campaign_id, log_month)
SELECT message_id, DATE '1970-01-01' FROM messages
ON CONFLICT DO NOTHING;

DO $$
DECLARE
    t text;
    pk text;
    ix record;
    this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    m date;
BEGIN
    FOREACH t IN ARRAY ARRAY['deliveries', 'delivery_events'] LOOP
        pk := CASE t WHEN 'deliveries' THEN 'campaign_id, recipient_id, log_month'
                     ELSE 'event_id, log_month' END;
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t, t || '_legacy');
        EXECUTE format('ALTER TABLE %I RENAME CONSTRAINT %I TO %I',
                       t || '_legacy', t || '_pkey', t || '_legacy_pkey');
        EXECUTE format(
            'ALTER TABLE %I ADD COLUMN log_month date NOT NULL DEFAULT DATE ''1970-01-01''',
            t || '_legacy');
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
            ' PARTITION BY RANGE (log_month)', t, t || '_legacy');
        -- Writers that do not say (fixtures, a hand-made row): the current month.
        EXECUTE format(
            'ALTER TABLE %I ALTER COLUMN log_month'
            ' SET DEFAULT (date_trunc(''month'', now() AT TIME ZONE ''UTC''))::date', t);
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (%s)', t, pk);
        -- Every other index of the old table, on the new one (whatever earlier migrations
        -- added): the old index is renamed, the same definition is created on the parent.
        FOR ix IN
            SELECT indexname, indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename = t || '_legacy'
               AND indexname <> t || '_legacy_pkey'
        LOOP
            EXECUTE format('ALTER INDEX %I RENAME TO %I', ix.indexname,
                           left(ix.indexname, 55) || '_legacy');
            EXECUTE regexp_replace(ix.indexdef, ' ON (ONLY )?(\S+\.)?' || t || '_legacy ',
                                   ' ON ' || t || ' ');
        END LOOP;
        -- Its row triggers too (an install that applied a later migration first, e.g.
        -- 0032's engagement triggers): moved to the parent, which clones them onto every
        -- partition, the old one included when it is attached.
        FOR ix IN
            SELECT tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger
             WHERE tgrelid = (t || '_legacy')::regclass AND NOT tgisinternal
        LOOP
            EXECUTE format('DROP TRIGGER %I ON %I', ix.tgname, t || '_legacy');
            EXECUTE regexp_replace(ix.def, ' ON (\S+\.)?' || t || '_legacy ', ' ON ' || t || ' ');
        END LOOP;
        -- The old key gives way to the new one (with log_month), that ATTACH builds.
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t || '_legacy', t || '_legacy_pkey');
        -- ATTACH builds the new unique key on the old rows and checks the bound by a scan.
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       t, t || '_legacy', this_month);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN log_month DROP DEFAULT', t || '_legacy');
        -- This month and the next three; the tracker keeps creating them ahead.
        FOR i IN 0..3 LOOP
            m := (this_month + make_interval(months => i))::date;
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           t || '_' || to_char(m, '"y"YYYY"m"MM'), t, m,
                           (m + interval '1 month')::date);
        END LOOP;
        -- A safety net: rows of a month whose partition is missing (it is logged).
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', t || '_default', t);
    END LOOP;
END $$;

-- A fresh install has nothing in the legacy partitions: drop them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM deliveries_legacy) THEN
        DROP TABLE deliveries_legacy;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM delivery_events_legacy) THEN
        DROP TABLE delivery_events_legacy;
    END IF;
END $$;

-- Retention finds the campaigns of a month by this.
CREATE INDEX delivery_log_months_month ON delivery_log_months (log_month);

-- ===== a list's size without COUNT(*) over its recipients (issue 16 item 3) =====
-- Every statement that adds or removes recipients appends one row per list it touched with
-- the net change (statement triggers over the transition tables: one row per COPY of an
-- import, not per recipient). Appending never waits on another writer (an import holds its
-- transaction for minutes; a counter column on `lists` would queue every API insert of that
-- list behind it). The API reads the sum and folds a list's rows into one now and then.
CREATE TABLE list_recipient_counts (
    list_id uuid NOT NULL,
    delta   bigint NOT NULL
);
CREATE INDEX list_recipient_counts_list ON list_recipient_counts (list_id);

CREATE FUNCTION recipients_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO list_recipient_counts (list_id, delta)
    SELECT list_id, count(*) FROM recipients_added GROUP BY list_id;
    RETURN NULL;
END $$;
CREATE FUNCTION recipients_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO list_recipient_counts (list_id, delta)
    SELECT list_id, -count(*) FROM recipients_removed GROUP BY list_id;
    RETURN NULL;
END $$;
CREATE FUNCTION recipients_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM list_recipient_counts;
    RETURN NULL;
END $$;
CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients
    REFERENCING NEW TABLE AS recipients_added
    FOR EACH STATEMENT EXECUTE FUNCTION recipients_count_inserted();
CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients
    REFERENCING OLD TABLE AS recipients_removed
    FOR EACH STATEMENT EXECUTE FUNCTION recipients_count_deleted();
CREATE TRIGGER recipients_count_truncate AFTER TRUNCATE ON recipients
    FOR EACH STATEMENT EXECUTE FUNCTION recipients_count_truncated();
-- (No statement moves a recipient to another list: list_id is never updated.)
INSERT INTO list_recipient_counts (list_id, delta)
SELECT list_id, count(*) FROM recipients GROUP BY list_id;
