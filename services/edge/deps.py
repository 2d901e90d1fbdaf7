"""What the edge's route handlers get injected: settings, webhook policy, the producer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from libs.common.kafka import EventProducer
from libs.common.settings import IpNetwork, Settings
from libs.web.problems import ProblemError
from services.edge.directory import Directory
from services.edge.hits import HitPublisher
from services.edge.rate_limit import TokenBuckets
from services.edge.webhook_policy import WebhookPolicy


@dataclass
class EdgeResources:
    """The edge keeps no state: the producer exists only while the app runs."""

    settings: Settings
    webhooks: WebhookPolicy
    producer: EventProducer | None = None
    hits: HitPublisher = field(init=False)
    trusted_proxies: tuple[IpNetwork, ...] = field(init=False)
    # Read-only views for the subscribe form and the preference centre (display only).
    directory: Directory = field(init=False)
    # The subscribe form's limits, per client IP and per address (in this process).
    per_ip: TokenBuckets = field(init=False)
    per_address: TokenBuckets = field(init=False)

    def __post_init__(self) -> None:
        self.hits = HitPublisher(lambda: self.events)
        self.trusted_proxies = self.settings.trusted_proxy_networks()
        self.directory = Directory(self.settings.database_url)
        self.per_ip = TokenBuckets(self.settings.subscribe_per_ip_per_minute, 60.0)
        self.per_address = TokenBuckets(self.settings.subscribe_per_address_per_hour, 3600.0)

    @property
    def events(self) -> EventProducer:
        if self.producer is None:
            raise ProblemError(503, "the edge is starting; the broker is not connected yet")
        return self.producer


def get_resources(request: Request) -> EdgeResources:
    resources: EdgeResources = request.app.state.resources
    return resources


Resources = Annotated[EdgeResources, Depends(get_resources)]
