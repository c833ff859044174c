# -*- test-case-name: tests.test_cli_demo -*-
"""
The embedded demo "cluster": one process in a container of the telenet image serving

- HTTP on port 80: every GET answers the ``--body`` text (the ``echo`` service);
- DNS on port 53 (UDP and TCP) for the ``--record NAME=IP`` names (``self`` is this
  container's address), as a cluster's DNS has them (``ClusterRecords``): A or AAAA, a TXT
  record, the SRV record ``_http._tcp.NAME`` (port 80) of a service name (``*.svc.*``), PTR
  records for the addresses; NXDOMAIN for anything else;
- with ``--http-only``, the HTTP service alone (a second service, at another address);
- raw SFTP on port 8022 (``telenet.agent``, the traffic-agent's part): ``--exports`` as
  ``/tel_app_exports``, with sample files of the ``--sample`` container.

    python3 -m telenet.democluster --body TEXT --record echo.default.svc.cluster.local=self \
        --exports /exports --sample echo

It prints ``ready`` once everything listens.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import Any, cast

from twisted.internet import defer
from twisted.names import dns, error
from twisted.names.common import ResolverBase

TTL = 5

SAMPLE_FILES = {
    "var/run/secrets/kubernetes.io/serviceaccount/token": "demo-token-123\n",
    "var/run/secrets/kubernetes.io/serviceaccount/namespace": "default\n",
    "var/run/secrets/kubernetes.io/serviceaccount/ca.crt": "(a demo CA certificate)\n",
}


def write_samples(exports: str, container: str) -> None:
    for relative, text in SAMPLE_FILES.items():
        path = os.path.join(exports, container, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


class ClusterRecords(ResolverBase):
    """The records of a cluster's DNS for ``records`` (name → address); see the docstring."""

    def __init__(self, records: dict[str, str]) -> None:
        super().__init__()
        self.records: dict[str, dict[int, list[Any]]] = {}
        for name, address in records.items():
            name = name.lower().rstrip(".")
            ip = ipaddress.ip_address(address)
            record: Any = (
                dns.Record_A(address, TTL) if ip.version == 4 else dns.Record_AAAA(address, TTL)
            )
            self._add(name, record)
            self._add(name, dns.Record_TXT(f"demo service {name}".encode(), ttl=TTL))
            if ".svc." in name:
                self._add(f"_http._tcp.{name}", dns.Record_SRV(0, 100, 80, name.encode(), TTL))
            reverse = ip.reverse_pointer
            if reverse not in self.records:
                self._add(reverse, dns.Record_PTR(name.encode(), TTL))

    def _add(self, name: str, record: Any) -> None:
        self.records.setdefault(name, {}).setdefault(record.TYPE, []).append(record)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        key = name.decode("ascii", "replace").lower().rstrip(".")
        types = self.records.get(key)
        if types is None:
            return defer.fail(error.DomainError(name))
        answers = [
            dns.RRHeader(name=name, type=kind, cls=dns.IN, ttl=TTL, auth=True, payload=record)
            for kind, records in types.items()
            if type in (kind, dns.ALL_RECORDS)
            for record in records
        ]
        return defer.succeed((answers, [], []))


def main(argv: list[str] | None = None) -> None:
    from twisted.internet.protocol import ServerFactory
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.names import server
    from twisted.web import resource
    from twisted.web import server as web

    from telenet import agent
    from telenet.core.reactor import global_reactor

    parser = argparse.ArgumentParser(prog="python3 -m telenet.democluster")
    parser.add_argument("--body", default="hello from echo.default")
    parser.add_argument("--record", action="append", default=[], metavar="NAME=IP")
    parser.add_argument("--exports", default="/exports")
    parser.add_argument("--sample", default="echo", metavar="CONTAINER")
    parser.add_argument("--agent-port", type=int, default=8022)
    parser.add_argument("--http-only", action="store_true", help="the HTTP service alone")
    args = parser.parse_args(argv)
    me = socket.gethostbyname(socket.gethostname())
    records = {}
    for item in args.record:
        name, _, ip = item.partition("=")
        records[name.lower().rstrip(".")] = me if ip == "self" else ip

    class Body(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain")
            return args.body.encode() + b"\n"

    reactor = global_reactor()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    reactor.listenTCP(80, cast(ServerFactory, web.Site(Body())), 50, "")
    if not args.http_only:
        write_samples(args.exports, args.sample)
        factory = server.DNSServerFactory(authorities=[ClusterRecords(records)])
        reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), "", 8192)
        reactor.listenTCP(53, factory, 50, "")
        options = agent.Options()
        options.parseOptions(["--root", args.exports, "--listen", f"tcp:{args.agent_port}"])
        agent.makeService(options, reactor).startService()
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
