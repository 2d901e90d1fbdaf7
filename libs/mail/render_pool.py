"""Rendering off the event loop: a few threads build outboxes from user templates.

A template's render is CPU-bound user code. On the event loop it would stop heartbeats,
consumers and every other batch for as long as it runs. A thread cannot be killed, so what
bounds a runaway render is the sandbox's budget (time and size per message, see
`libs.common.template_sandbox`); the threads only keep the loop free meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID

from libs.common.events import BatchRecipient
from libs.common.templating import RenderLimits
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Outbox
from libs.mail.rendering import Content, build_outbox


class RenderPool:
    def __init__(self, threads: int = 2, limits: RenderLimits | None = None) -> None:
        self.limits = limits or RenderLimits()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="render")

    async def outbox(
        self,
        content: Content,
        campaign_id: UUID,
        batch_id: str,
        recipients: list[BatchRecipient],
        policy: HeaderPolicy,
    ) -> Outbox:
        build = functools.partial(
            build_outbox, content, campaign_id, batch_id, recipients, policy, self.limits
        )
        return await asyncio.get_running_loop().run_in_executor(self._executor, build)

    def close(self) -> None:
        # A render still running ends within its budget; nobody waits for it.
        self._executor.shutdown(wait=False, cancel_futures=True)
