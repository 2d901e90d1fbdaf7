"""A campaign with a rate cap (issue 17 item 4) is emitted at its pace, and its batches are
not taken for lost while its cap legitimately holds them: no re-emission storm. Real
PostgreSQL and broker; time is moved by rewriting the recorded times."""

from __future__ import annotations

import uuid

import asyncpg

from libs.common.settings import Settings
from services.scheduler.repository import ReemitPolicy
from services.scheduler.tests.test_reemission import emitted, planned_emitter, seed


async def test_a_capped_campaign_is_emitted_at_its_pace_and_not_reemitted_early(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    provider = f"capped-{uuid.uuid4().hex[:6]}"
    campaign_id = await seed(pool, provider, recipients=60)
    # 240 an hour: 5 minutes of it is 20 recipients, two batches of 10.
    await pool.execute("UPDATE campaigns SET max_per_hour = 240 WHERE id = $1", campaign_id)
    policy = ReemitPolicy(base_s=5.0, rates={})
    async with planned_emitter(pool, settings, campaign_id, policy) as emitter:
        await emitter.emit_due()
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 0, 3: 0, 4: 0, 5: 0}

        # Batch 0 is accounted for: room for one more.
        await pool.execute(
            "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, folded_at)"
            " VALUES ($1, $2, 10, now() - interval '1 hour')",
            f"{campaign_id}:0",
            campaign_id,
        )
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0}

        # A minute without any sign of life: an uncapped batch would travel again (5 s
        # backoff, no backlog); these two wait for their cap (20 in flight at 240/h: 5 min,
        # twice).
        await pool.execute(
            "UPDATE batch_plans SET last_emitted_at = now() - interval '1 min',"
            " expected_by = now() - interval '1 min' WHERE campaign_id = $1 AND emitted > 0",
            campaign_id,
        )
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0}

        # Lowered cap, longer wait; raised cap, shorter: read at each tick, not at emission.
        await pool.execute(
            "UPDATE batch_plans SET last_emitted_at = now() - interval '11 min',"
            " expected_by = now() - interval '11 min' WHERE campaign_id = $1 AND emitted > 0",
            campaign_id,
        )
        await pool.execute("UPDATE campaigns SET max_per_hour = 100 WHERE id = $1", campaign_id)
        await emitter.emit_due()
        assert await emitted(pool, campaign_id) == {0: 1, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0}
        await pool.execute("UPDATE campaigns SET max_per_hour = 240 WHERE id = $1", campaign_id)
        await emitter.emit_due()
        # Past 10 min + backoff with nothing seen: lost after all, both travel again.
        assert await emitted(pool, campaign_id) == {0: 1, 1: 2, 2: 2, 3: 0, 4: 0, 5: 0}
