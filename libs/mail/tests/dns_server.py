"""A real DNS server for tests (dnslib over UDP and TCP on 127.0.0.1), serving a zone
that a test can change while it runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dnslib import MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from libs.common.embedded import free_port


class Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[Any]] = {}

    def txt(self, name: str, *values: str) -> None:
        # A TXT string holds 255 bytes at most: long records (RSA keys) are split.
        self.records[(name.lower().rstrip("."), "TXT")] = [
            TXT([v[i : i + 255] for i in range(0, len(v), 255)] or [""]) for v in values
        ]

    def mx(self, name: str, *hosts: str) -> None:
        self.records[(name.lower().rstrip("."), "MX")] = [
            MX(h, preference=10 * (n + 1)) for n, h in enumerate(hosts)
        ]

    def a(self, name: str, *ips: str) -> None:
        self.records[(name.lower().rstrip("."), "A")] = [A(ip) for ip in ips]

    def drop(self, name: str, kind: str) -> None:
        self.records.pop((name.lower().rstrip("."), kind), None)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        kind = QTYPE[request.q.qtype]
        answers = self.records.get((name, kind))
        if answers is None:
            if not any(n == name for n, _ in self.records):
                reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rdata in answers:
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=60))
        return reply


@contextmanager
def dns_server() -> Iterator[tuple[Zone, int]]:
    zone = Zone()
    port = free_port()
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    udp = DNSServer(zone, port=port, address="127.0.0.1", logger=quiet)
    tcp = DNSServer(zone, port=port, address="127.0.0.1", tcp=True, logger=quiet)
    udp.start_thread()
    tcp.start_thread()
    try:
        yield zone, port
    finally:
        udp.stop()
        tcp.stop()
