# -*- test-case-name: tests.test_dns -*-
"""
A cache in front of the cluster's DNS server: answers kept for their records' TTL (the
smallest of the answer), NXDOMAIN and empty answers for the SOA minimum of their authority
section (RFC 2308: the smaller of the SOA's TTL and its MINIMUM field); an answer without
either is not kept. A cached answer's TTLs count down, as a resolver's do. ``flush`` forgets
everything (routes or namespaces changed).

Failures other than NXDOMAIN (timeouts, SERVFAIL, REFUSED) are never kept.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.names import common, dns, error
from twisted.python.failure import Failure
from zope.interface import implementer

from telenet.network.dnsnames import normal

Result = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


@attrs.frozen
class _Entry:
    stored: float
    expires: float
    result: Result | None
    failure: Failure | None


def _records(result: Result) -> list[dns.RRHeader]:
    return [*result[0], *result[1], *result[2]]


def negative_ttl(authority: list[dns.RRHeader]) -> int | None:
    """How long an NXDOMAIN or empty answer may be kept: its SOA's minimum, if it has one."""
    for rr in authority:
        if isinstance(rr.payload, dns.Record_SOA):
            return int(min(rr.ttl, rr.payload.minimum))
    return None


def positive_ttl(result: Result) -> int | None:
    """How long an answer may be kept: its smallest TTL (None when it has no records)."""
    answers, authority, _ = result
    if not answers:
        return negative_ttl(authority)
    return int(min(rr.ttl for rr in _records(result)))


def _aged(result: Result, elapsed: int) -> Result:
    def age(rrs: list[dns.RRHeader]) -> list[dns.RRHeader]:
        return [
            dns.RRHeader(
                rr.name.name, rr.type, rr.cls, max(0, rr.ttl - elapsed), rr.payload, rr.auth
            )
            for rr in rrs
        ]

    return age(result[0]), age(result[1]), age(result[2])


@implementer(IResolver)
class CachingResolver(common.ResolverBase):
    """I ask ``resolver`` what I have not kept, and keep its answers for as long as they say."""

    def __init__(self, resolver: IResolver, clock: IReactorTime) -> None:
        super().__init__()
        self.resolver = resolver
        self.clock = clock
        self.entries: dict[tuple[str, int, int], _Entry] = {}

    def flush(self) -> None:
        self.entries.clear()

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        key = (normal(name), cls, type)
        now = self.clock.seconds()
        entry = self.entries.get(key)
        if entry is not None and entry.expires > now:
            if entry.failure is not None:
                return defer.fail(entry.failure)
            assert entry.result is not None
            return defer.succeed(_aged(entry.result, int(now - entry.stored)))
        self.entries.pop(key, None)
        d = self.resolver.query(dns.Query(name, type, cls), timeout)
        d.addCallbacks(
            self._keep, self._keep_failure, callbackArgs=(key, now), errbackArgs=(key, now)
        )
        return d

    def _keep(self, result: Result, key: tuple[str, int, int], asked: float) -> Result:
        ttl = positive_ttl(result)
        if ttl:
            self.entries[key] = _Entry(asked, asked + ttl, result, None)
        return result

    def _keep_failure(self, reason: Failure, key: tuple[str, int, int], asked: float) -> Failure:
        if reason.check(error.DomainError, error.AuthoritativeDomainError):
            message = reason.value.args[0] if reason.value.args else None
            ttl = negative_ttl(message.authority) if isinstance(message, dns.Message) else None
            if ttl:
                self.entries[key] = _Entry(asked, asked + ttl, None, reason)
        return reason
