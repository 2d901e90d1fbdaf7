"""Migration 0031 on an existing install (issue 16 item 2): the delivery log and events
become month partitions in place, with every row, index and trigger, and the tracker goes
on folding the campaigns already known into the same partition (their unique keys still
refuse a recipient or an event seen twice)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from libs.common import db
from libs.common.embedded import create_database
from services.tracker.store import TrackerStore
from services.tracker.tests.support import make_results, new_campaign
from services.tracker.tests.test_delivery_events import provider_event
from services.tracker.tests.test_retention import drop_database


async def test_an_existing_install_is_converted_in_place(postgres_admin_dsn: str) -> None:
    name = f"mailfleet_test_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(postgres_admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, name, sql in db._migration_files():
        if version != 31:  # an install from before it (later ones applied first, even)
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
    await conn.close()
    pool = await db.create_pool(dsn, max_size=3)
    try:
        store = TrackerStore(pool)
        campaign = await new_campaign(pool)
        results = make_results(campaign, 2, 50)
        opened = provider_event("sg-open-old", "open", campaign, 1)
        # What the tracker before 0031 had written for the first batch and one open.
        await pool.execute(
            "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id,"
            " opened_at, open_count) SELECT $1, g, 'r' || g || '@example.com', 'sent', $2,"
            " CASE WHEN g = 1 THEN now() END, CASE WHEN g = 1 THEN 1 ELSE 0 END"
            " FROM generate_series(1, 50) g",
            campaign,
            results[0].batch_id,
        )
        await pool.execute(
            "INSERT INTO tracker_batches (batch_id, campaign_id, recipients) VALUES ($1, $2, 50)",
            results[0].batch_id,
            campaign,
        )
        await pool.execute(
            "INSERT INTO campaign_stats (campaign_id, audience_total, batches_total,"
            " batches_done, sent, opens, unique_opens) VALUES ($1, 100, 2, 1, 50, 1, 1)",
            campaign,
        )
        await pool.execute(
            "INSERT INTO delivery_events (event_id, campaign_id, recipient_id, email, event,"
            " provider, occurred_at, matched) VALUES ($1, $2, 1, 'r1@example.com', 'open',"
            " 'sendgrid', now(), true)",
            opened.event_id,
            campaign,
        )

        assert await db.migrate(dsn) == ["0031_partitioned_delivery_log.sql"]

        parts = {
            r["relname"]
            for r in await pool.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'deliveries'::regclass"
            )
        }
        month = datetime.now(UTC).strftime("y%Ym%m")
        assert {"deliveries_legacy", f"deliveries_{month}", "deliveries_default"} <= parts
        assert await pool.fetchval("SELECT count(*) FROM deliveries_legacy") == 50
        assert await pool.fetchval("SELECT count(*) FROM delivery_events_legacy") == 1
        # The engagement triggers (0032, applied before) moved to the parent.
        triggers = await pool.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'deliveries'::regclass"
            " AND tgname LIKE 'deliveries_engagement%'"
        )
        assert triggers == 2

        # The campaign goes on in its old partition: its second batch lands there, a
        # replay and a redelivered event change nothing, a recipient reported again in
        # another batch is refused.
        await store.fold_results(results[1:], failure_threshold=0.5)
        assert await pool.fetchval("SELECT count(*) FROM deliveries_legacy") == 100
        assert (await store.fold_results(results, failure_threshold=0.5)).duplicates == 2
        assert (await store.fold_events([opened])).duplicates == 1
        stats = await pool.fetchrow(
            "SELECT sent, unique_opens FROM campaign_stats WHERE campaign_id = $1", campaign
        )
        assert (stats["sent"], stats["unique_opens"]) == (100, 1)
        again = make_results(campaign, 1, 1)[0].model_copy(update={"batch_id": "again"})
        fold = await store.fold_results([again], failure_threshold=0.5)
        assert fold.conflicts == 1
    finally:
        await pool.close()
        await drop_database(postgres_admin_dsn, name)
