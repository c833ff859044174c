"""
The "cluster" of the end-to-end tests: one process serving HTTP and cluster DNS.

Run in a container of the telenet image (which has Twisted) on the cluster network:

    python3 /cluster.py --body TEXT --record echo.default.svc.cluster.local=172.30.0.2 ...

- HTTP on port 80: every GET answers ``TEXT``;
- DNS on port 53 (UDP and TCP): A and AAAA records for the ``--record`` names (a name may be
  given once per address; ``self`` is this container's IPv4 address, ``self6`` its global
  IPv6 one); any other name is NXDOMAIN.

Both listen on every address of both families where the container has IPv6 (``::``, dual
stack), on IPv4 alone where it has not.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.names import dns, error, server
from twisted.names.common import ResolverBase
from twisted.web import resource
from twisted.web import server as web


class Records(ResolverBase):
    def __init__(self, records: list[tuple[str, str]]) -> None:
        super().__init__()
        self.records: dict[str, list[str]] = {}
        for name, address in records:
            self.records.setdefault(name.lower().rstrip("."), []).append(address)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        key = name.decode("ascii", "replace").lower().rstrip(".")
        addresses = self.records.get(key)
        if addresses is None:
            return defer.fail(error.DomainError(name))
        answers = []
        for address in addresses:
            kind = dns.AAAA if ":" in address else dns.A
            if type not in (kind, dns.ALL_RECORDS):
                continue
            payload: Any = (
                dns.Record_AAAA(address, 5) if kind == dns.AAAA else dns.Record_A(address, 5)
            )
            answers.append(
                dns.RRHeader(name=name, type=kind, cls=dns.IN, ttl=5, auth=True, payload=payload)
            )
        return defer.succeed((answers, [], []))


def own_ipv6() -> str | None:
    """This container's first global IPv6 address (``/proc/net/if_inet6``), if any."""
    try:
        with open("/proc/net/if_inet6") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[3] == "00" and fields[5] != "lo":
            return str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    return None


class Body(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return self.body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--body", required=True)
    parser.add_argument("--record", action="append", default=[])
    args = parser.parse_args()
    me = socket.gethostbyname(socket.gethostname())
    me6 = own_ipv6()
    selves = {"self": me, "self6": me6}
    records = [(name, selves.get(ip, ip)) for name, ip in (r.split("=", 1) for r in args.record)]
    records = [(name, ip) for name, ip in records if ip]
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    factory = server.DNSServerFactory(authorities=[Records(records)])
    # "::" is dual stack (bindv6only is 0): IPv4 clients reach it as ::ffff:a.b.c.d.
    anywhere = "::" if me6 is not None else ""
    reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), anywhere)  # type: ignore[attr-defined]
    reactor.listenTCP(53, factory, 50, anywhere)  # type: ignore[attr-defined]
    site = web.Site(Body(args.body.encode() + b"\n"))
    reactor.listenTCP(80, site, 50, anywhere)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
