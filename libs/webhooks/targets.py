"""Where webhooks may be sent (SSRF protection). Pure: the caller resolves names.

An endpoint's URL is checked twice: when an admin saves it (scheme, host, port) and at
every delivery, where every address its host resolves to must be allowed. By default only
public unicast addresses are: private, loopback, link-local, shared, multicast, reserved
and documentation ranges (and IPv6 forms that embed them) are refused. An admin allows
more with MAILFLEET_WEBHOOK_ALLOWED_TARGETS: CIDRs (e.g. 127.0.0.1/32 for tests) and host
names (e.g. hooks.internal, whose addresses are then allowed whatever they are).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2000

# Beyond what `is_global` already refuses: ranges a request from our network must not reach.
_EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "192.0.0.0/24",
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",
        "255.255.255.255/32",
        "64:ff9b::/96",  # NAT64: may embed any IPv4 address
        "64:ff9b:1::/48",
        "2002::/16",  # 6to4: embeds an IPv4 address
        "ff00::/8",
    )
)


class TargetRefused(ValueError):
    """The URL or an address it resolves to is not allowed; the message says why."""


@dataclass(frozen=True)
class TargetPolicy:
    allowed_networks: tuple[IpNetwork, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    require_https: bool = True

    @classmethod
    def parse(cls, allowed: str, *, require_https: bool) -> TargetPolicy:
        """`allowed`: comma-separated CIDRs, addresses and host names; ValueError if bad."""
        networks: list[IpNetwork] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in allowed.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            host = item.lower().rstrip(".")
            if not _is_host_name(host):
                raise ValueError(f"{item!r} is neither a CIDR (e.g. 127.0.0.1/32) nor a host name")
            hosts.add(host)
        return cls(tuple(networks), frozenset(hosts), require_https)

    def check_url(self, url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of an acceptable URL; TargetRefused otherwise. A literal
        address in the URL is checked here too (a name is checked when resolved)."""
        if len(url) > MAX_URL_LENGTH:
            raise TargetRefused(f"URL longer than {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise TargetRefused(f"not a valid URL: {exc}") from exc
        allowed_schemes = ("https",) if self.require_https else ("https", "http")
        if parts.scheme not in allowed_schemes:
            raise TargetRefused(
                "the URL must start with https://"
                if self.require_https
                else "the URL must start with https:// or http://"
            )
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise TargetRefused("the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise TargetRefused("credentials in the URL are not allowed; use the signature")
        if parts.fragment:
            raise TargetRefused("the URL must not have a #fragment")
        literal = _literal_address(host)
        if literal is not None:
            self.check_address(host, literal)
        elif not _is_host_name(host):
            raise TargetRefused(f"{host!r} is not a valid host name")
        return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)

    def check_address(self, host: str, address: IpAddress) -> None:
        """TargetRefused unless `address` (one that `host` resolved to) may be reached."""
        if host.lower().rstrip(".") in self.allowed_hosts:
            return
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            if mapped is not None:
                address = mapped  # judged as the IPv4 address it stands for
        if any(address in network for network in self.allowed_networks):
            return
        if not is_public(address):
            raise TargetRefused(
                f"{host} resolves to {address}, a private or special-purpose address; "
                "allow it with MAILFLEET_WEBHOOK_ALLOWED_TARGETS"
            )

    def check_addresses(self, host: str, addresses: list[IpAddress]) -> None:
        if not addresses:
            raise TargetRefused(f"{host} resolves to no address")
        for address in addresses:
            self.check_address(host, address)


def is_public(address: IpAddress) -> bool:
    if not address.is_global:
        return False
    return not any(
        address in network for network in _EXTRA_BLOCKED if network.version == address.version
    )


def _literal_address(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _is_host_name(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    return all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label)
        and label.isascii()
        for label in labels
    )
