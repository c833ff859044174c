"""
The "cluster" of the end-to-end tests: one process serving HTTP and cluster DNS.

Run in a container of the telenet image (which has Twisted) on the cluster network:

    python3 /cluster.py --body TEXT --record echo.default.svc.cluster.local=172.30.0.2 ...

- HTTP on port 80: every GET answers ``TEXT``;
- DNS on port 53 (UDP and TCP): A records for the ``--record`` names (the address ``self`` is
  this container's own); any other name is NXDOMAIN.
"""

from __future__ import annotations

import argparse
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
    def __init__(self, records: dict[str, str]) -> None:
        super().__init__()
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        key = name.decode("ascii", "replace").lower().rstrip(".")
        address = self.records.get(key)
        if address is None:
            return defer.fail(error.DomainError(name))
        if type not in (dns.A, dns.ALL_RECORDS):
            return defer.succeed(([], [], []))
        answer = dns.RRHeader(
            name=name,
            type=dns.A,
            cls=dns.IN,
            ttl=5,
            auth=True,
            payload=dns.Record_A(address, ttl=5),
        )
        return defer.succeed(([answer], [], []))


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
    records = {
        name: me if ip == "self" else ip for name, ip in (r.split("=", 1) for r in args.record)
    }
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    factory = server.DNSServerFactory(authorities=[Records(records)])
    reactor.listenUDP(53, dns.DNSDatagramProtocol(factory))  # type: ignore[attr-defined]
    reactor.listenTCP(53, factory)  # type: ignore[attr-defined]
    reactor.listenTCP(80, web.Site(Body(args.body.encode() + b"\n")))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
