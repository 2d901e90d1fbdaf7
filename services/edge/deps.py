"""What the edge's route handlers get injected: settings, webhook policy, the producer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from libs.common.kafka import EventProducer
from libs.common.settings import IpNetwork, Settings
from libs.web.problems import ProblemError
from services.edge.hits import HitPublisher
from services.edge.webhook_policy import WebhookPolicy


@dataclass
class EdgeResources:
    """The edge keeps no state: the producer exists only while the app runs."""

    settings: Settings
    webhooks: WebhookPolicy
    producer: EventProducer | None = None
    hits: HitPublisher = field(init=False)
    trusted_proxies: tuple[IpNetwork, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.hits = HitPublisher(lambda: self.events)
        self.trusted_proxies = self.settings.trusted_proxy_networks()

    @property
    def events(self) -> EventProducer:
        if self.producer is None:
            raise ProblemError(503, "the edge is starting; the broker is not connected yet")
        return self.producer


def get_resources(request: Request) -> EdgeResources:
    resources: EdgeResources = request.app.state.resources
    return resources


Resources = Annotated[EdgeResources, Depends(get_resources)]
