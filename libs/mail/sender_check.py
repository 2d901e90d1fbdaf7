"""Is a sending domain set up for bulk mail? SPF, DKIM, DMARC and the bounce MX, from DNS.

Each check is `pass`, `warn` or `fail` with what to fix. The whole check has one time
budget (`MAILFLEET_DNS_TIMEOUT_S`): a caller that must not hang (scheduling) gets a report
that says the check was skipped rather than waiting on an unreachable resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from libs.mail.dkim_signing import DkimKey

CheckStatus = Literal["pass", "warn", "fail"]
# RFC 7208 4.6.4: more than 10 DNS-querying terms is a permanent error.
SPF_LOOKUP_LIMIT = 10
_PROVIDER_SPF_INCLUDES = {"sendgrid": "sendgrid.net"}


class DnsUnreachable(Exception):
    """No answer at all from the resolver (timeout, nothing listening): not a verdict."""


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None


@dataclass
class SenderReport:
    domain: str
    checks: list[Check] = field(default_factory=list)
    # Set when DNS could not be asked: the checks are then empty, not failed.
    skipped: str | None = None

    @property
    def status(self) -> CheckStatus | Literal["skipped"]:
        if self.skipped is not None:
            return "skipped"
        for level in ("fail", "warn"):
            if any(c.status == level for c in self.checks):
                return level
        return "pass"


@dataclass(frozen=True)
class SenderSetup:
    """What the domain should publish, from mailfleet's configuration."""

    provider: str  # sendgrid, smtp or sink
    smtp_host: str
    dkim_keys: list[DkimKey]
    bounce_domain: str = ""  # "" = the From domain


class Dns:
    def __init__(self, nameservers: list[str], port: int, timeout_s: float) -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = nameservers
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # No resolv.conf: no servers, so every check says it was skipped.
                self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.port = port
        self._resolver.lifetime = timeout_s
        self.timeout_s = timeout_s

    async def _answer(self, name: str, kind: str) -> dns.resolver.Answer | None:
        try:
            return await self._resolver.resolve(name, kind)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
            return None  # e.g. _dmarc. in front of a 250-character domain: nothing there
        except (dns.resolver.LifetimeTimeout, dns.resolver.NoNameservers) as exc:
            raise DnsUnreachable(str(exc)) from exc

    async def txt(self, name: str) -> list[str]:
        answer = await self._answer(name, "TXT")
        if answer is None:
            return []
        return [b"".join(r.strings).decode(errors="replace") for r in answer]

    async def mx(self, name: str) -> list[str]:
        answer = await self._answer(name, "MX")
        return [] if answer is None else [str(r.exchange).rstrip(".") for r in answer]

    async def ips(self, name: str) -> set[str]:
        try:
            return {str(ipaddress.ip_address(name))}
        except ValueError:
            pass
        answer = await self._answer(name, "A")
        return set() if answer is None else {r.address for r in answer}


async def check_sender(domain: str, setup: SenderSetup, resolver: Dns) -> SenderReport:
    """The report for `domain`; `skipped` (never an exception) when DNS does not answer."""
    domain = domain.lower().rstrip(".")
    report = SenderReport(domain)
    try:
        async with asyncio.timeout(resolver.timeout_s):
            report.checks += await _spf(domain, setup, resolver)
            report.checks.append(await _dkim(domain, setup, resolver))
            report.checks += await _dmarc(domain, setup, resolver)
            report.checks.append(await _bounce_mx(domain, setup, resolver))
    except (TimeoutError, DnsUnreachable) as exc:
        report.checks.clear()
        report.skipped = f"no DNS resolver answered within {resolver.timeout_s:g}s ({exc})"
    return report


def _spf_record(records: list[str]) -> list[str]:
    return [r for r in records if r.lower().startswith("v=spf1")]


@dataclass
class _SpfWalk:
    lookups: int = 0
    includes: set[str] = field(default_factory=set)
    terms: set[str] = field(default_factory=set)
    broken: list[str] = field(default_factory=list)


def _queries_dns(term: str) -> bool:
    """a, mx, ptr and exists cost a lookup (include and redirect are counted with their walk)."""
    return term in ("a", "mx", "ptr") or term.startswith(
        ("a:", "a/", "mx:", "mx/", "ptr:", "exists:")
    )


async def _walk_spf(domain: str, resolver: Dns, walk: _SpfWalk, depth: int = 0) -> None:
    """Every term of the record and of the records it includes, counting DNS lookups."""
    if depth > SPF_LOOKUP_LIMIT or walk.lookups > SPF_LOOKUP_LIMIT:
        return
    records = _spf_record(await resolver.txt(domain))
    if len(records) != 1:
        walk.broken.append(f"{domain}: {len(records)} SPF records")
        return
    for term in records[0].split()[1:]:
        bare = term.lstrip("+-~?").lower()
        walk.terms.add(bare)
        if _queries_dns(bare):
            walk.lookups += 1
        target = bare.split(":", 1)[1] if bare.startswith("include:") else None
        if bare.startswith("redirect="):
            target = bare.split("=", 1)[1]
        if target:
            walk.lookups += 1
            walk.includes.add(target)
            await _walk_spf(target, resolver, walk, depth + 1)


async def _spf(domain: str, setup: SenderSetup, resolver: Dns) -> list[Check]:
    records = _spf_record(await resolver.txt(domain))
    if not records:
        return [Check("spf", "fail", "no SPF record", f"publish a TXT record at {domain}: "
                      f'"v=spf1 {_spf_mechanism_hint(setup)} -all"')]  # fmt: skip
    if len(records) > 1:
        return [Check("spf", "fail", f"{len(records)} SPF records (receivers reject all)",
                      "merge them into one TXT record")]  # fmt: skip
    walk = _SpfWalk()
    await _walk_spf(domain, resolver, walk)
    checks = [_spf_all(records[0]), await _spf_provider(setup, walk, resolver)]
    if walk.lookups > SPF_LOOKUP_LIMIT or walk.broken:
        detail = f"{walk.lookups} DNS lookups (limit {SPF_LOOKUP_LIMIT}), counting nested includes"
        detail += "; " + "; ".join(walk.broken) if walk.broken else ""
        checks.append(Check("spf_lookups", "fail", detail,
                            "flatten includes into ip4:/ip6: terms or drop unused ones"))  # fmt: skip
    elif walk.lookups == SPF_LOOKUP_LIMIT:
        checks.append(Check("spf_lookups", "warn", f"{walk.lookups} DNS lookups: at the limit",
                            "one more include breaks SPF; flatten some includes"))  # fmt: skip
    else:
        checks.append(Check("spf_lookups", "pass", f"{walk.lookups} DNS lookups"))
    return checks


def _spf_all(record: str) -> Check:
    terms = record.lower().split()
    if "+all" in terms or "all" in terms:
        return Check(
            "spf", "fail", f"{record!r} lets anyone send", "end the record with -all or ~all"
        )
    if "-all" in terms or "~all" in terms:
        return Check("spf", "pass", record)
    return Check("spf", "warn", f"{record!r} has no -all/~all", "end the record with -all or ~all")


def _spf_mechanism_hint(setup: SenderSetup) -> str:
    if setup.provider in _PROVIDER_SPF_INCLUDES:
        return f"include:{_PROVIDER_SPF_INCLUDES[setup.provider]}"
    return f"a:{setup.smtp_host}" if setup.provider == "smtp" else "include:<your provider>"


async def _spf_provider(setup: SenderSetup, walk: _SpfWalk, resolver: Dns) -> Check:
    hint = _spf_mechanism_hint(setup)
    if setup.provider in _PROVIDER_SPF_INCLUDES:
        ok = _PROVIDER_SPF_INCLUDES[setup.provider] in walk.includes
    elif setup.provider == "smtp":
        host = setup.smtp_host.lower()
        ips = await resolver.ips(host)
        allowed = {f"a:{host}", f"include:{host}"} | {f"ip4:{ip}" for ip in ips}
        allowed |= {f"ip6:{ip}" for ip in ips}
        ok = bool(allowed & walk.terms)
    else:
        return Check("spf_provider", "warn", f"provider {setup.provider!r} is a local test sink",
                     "send through sendgrid or smtp")  # fmt: skip
    if ok:
        return Check("spf_provider", "pass", f"SPF authorises {setup.provider} ({hint})")
    return Check("spf_provider", "fail", f"SPF does not authorise {setup.provider}",
                 f"add {hint} to the SPF record")  # fmt: skip


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, _, value = part.partition("=")
        if name.strip():
            tags[name.strip().lower()] = "".join(value.split())
    return tags


async def _dkim(domain: str, setup: SenderSetup, resolver: Dns) -> Check:
    keys = [k for k in setup.dkim_keys if k.domain == domain]
    if not keys:
        if setup.provider == "sendgrid":
            return Check("dkim", "warn", "no DKIM key configured in mailfleet",
                         "authenticate the domain in SendGrid (it signs with its own key)")  # fmt: skip
        return Check("dkim", "fail", "no DKIM key configured for this domain",
                     "add {domain, selector, key_file} to MAILFLEET_DKIM_KEYS")  # fmt: skip
    problems: list[str] = []
    for key in keys:
        name = f"{key.selector}._domainkey.{domain}"
        published = [_tags(r) for r in await resolver.txt(name)]
        if not published:
            problems.append(f"{name} does not resolve; publish TXT {key.dns_record()!r}")
        elif not any(t.get("p") == key.public_b64 for t in published):
            problems.append(f"{name} publishes another key; publish TXT {key.dns_record()!r}")
    if problems:
        return Check(
            "dkim", "fail", "; ".join(p.split(";")[0] for p in problems), " | ".join(problems)
        )
    selectors = ", ".join(k.selector for k in keys)
    return Check("dkim", "pass", f"selector(s) {selectors} publish the configured key(s)")


def _organisational(domain: str) -> str:
    # Without the public suffix list: the last two labels (right for example.com, not for
    # example.co.uk, where the record at the domain itself is usually the one found).
    return ".".join(domain.split(".")[-2:])


def _aligned(domain: str, other: str, mode: str) -> bool:
    if mode == "s":
        return domain == other
    return _organisational(domain) == _organisational(other)


async def _dmarc(domain: str, setup: SenderSetup, resolver: Dns) -> list[Check]:
    found = [r for r in await resolver.txt(f"_dmarc.{domain}") if r.lower().startswith("v=dmarc1")]
    org = _organisational(domain)
    if not found and org != domain:
        found = [r for r in await resolver.txt(f"_dmarc.{org}") if r.lower().startswith("v=dmarc1")]
    if not found:
        return [Check("dmarc", "fail", "no DMARC record", f'publish TXT at _dmarc.{domain}: '
                      f'"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"')]  # fmt: skip
    tags = _tags(found[0])
    policy = tags.get("p", "").lower()
    if policy in ("quarantine", "reject"):
        check = Check("dmarc", "pass", f"policy p={policy}")
    elif policy == "none":
        check = Check("dmarc", "warn", "policy p=none: monitoring only",
                      "move to p=quarantine or p=reject once the reports are clean")  # fmt: skip
    else:
        check = Check("dmarc", "fail", f"invalid policy p={policy or '(missing)'}",
                      "set p=none, p=quarantine or p=reject")  # fmt: skip
    return [check, _alignment(domain, setup, tags)]


def _alignment(domain: str, setup: SenderSetup, tags: dict[str, str]) -> Check:
    signing = {k.domain for k in setup.dkim_keys}
    dkim_ok = any(_aligned(domain, d, tags.get("adkim", "r")) for d in signing)
    bounce = setup.bounce_domain or domain
    spf_ok = _aligned(domain, bounce, tags.get("aspf", "r"))
    if setup.provider == "sendgrid" and not signing:
        # SendGrid signs d= the authenticated domain: aligned once that is set up there.
        return Check("dmarc_alignment", "warn", "alignment depends on SendGrid's domain "
                     "authentication", "authenticate this domain in SendGrid")  # fmt: skip
    if dkim_ok and spf_ok:
        return Check("dmarc_alignment", "pass", "From aligns with DKIM d= and the Return-Path")
    if dkim_ok or spf_ok:
        which = "DKIM" if dkim_ok else "SPF (Return-Path)"
        return Check("dmarc_alignment", "pass", f"From aligns through {which} only")
    return Check("dmarc_alignment", "fail", f"From {domain} aligns with neither DKIM nor "
                 f"the Return-Path {bounce}", "sign with a key for this domain or use a bounce "
                 "domain under it")  # fmt: skip


async def _bounce_mx(domain: str, setup: SenderSetup, resolver: Dns) -> Check:
    bounce = (setup.bounce_domain or domain).lower()
    hosts = [h for h in await resolver.mx(bounce) if h not in ("", ".")]
    if not hosts:
        return Check("bounce_mx", "fail", f"no MX for the bounce domain {bounce}",
                     f"publish an MX record for {bounce} pointing at the bounce mailbox")  # fmt: skip
    return Check("bounce_mx", "pass", f"{bounce} MX: {', '.join(sorted(hosts))}")
