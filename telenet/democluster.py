# -*- test-case-name: tests.test_cli_demo -*-
"""
The embedded demo "cluster": one process in a container of the telenet image serving

- HTTP on port 80: every GET answers the ``--body`` text (the ``echo`` service);
- DNS on port 53 (UDP and TCP) for the ``--record NAME=IP`` names (``self`` is this
  container's IPv4 address, ``self6`` its IPv6 one, if any; a name may be given once per
  family), as a cluster's DNS has them (``ClusterRecords``): A or AAAA, a TXT
  record, the SRV record ``_http._tcp.NAME`` (port 80) of a service name (``*.svc.*``), PTR
  records for the addresses; NXDOMAIN for anything else;
- with ``--http-only``, the HTTP service alone (a second service, at another address);
- raw SFTP on port 8022 (``telenet.agent``, the traffic-agent's part): ``--exports`` as
  ``/tel_app_exports``, with sample files of the ``--sample`` container.

    python3 -m telenet.democluster --body TEXT --record echo.default.svc.cluster.local=self \
        --exports /exports --sample echo

Everything listens on both families where the container has IPv6. It prints ``ready`` once
everything listens.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Iterable, Mapping
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
    """
    The records of a cluster's DNS for ``records`` (name → address, or (name, address) pairs,
    where a dual-stack service has one of each family); see the docstring.
    """

    def __init__(self, records: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        super().__init__()
        self.records: dict[str, dict[int, list[Any]]] = {}
        pairs = records.items() if isinstance(records, Mapping) else records
        for name, address in pairs:
            name = name.lower().rstrip(".")
            ip = ipaddress.ip_address(address)
            record: Any = (
                dns.Record_A(address, TTL) if ip.version == 4 else dns.Record_AAAA(address, TTL)
            )
            if name not in self.records:
                self._add(name, dns.Record_TXT(f"demo service {name}".encode(), ttl=TTL))
                if ".svc." in name:
                    srv = dns.Record_SRV(0, 100, 80, name.encode(), TTL)
                    self._add(f"_http._tcp.{name}", srv)
            self._add(name, record)
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


def own_ipv6(path: str = "/proc/net/if_inet6") -> str | None:
    """This container's first global IPv6 address (scope 00, not on ``lo``), if it has one."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[3] == "00" and fields[5] != "lo":
            return str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    return None


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
    selves = {"self": socket.gethostbyname(socket.gethostname()), "self6": own_ipv6()}
    records = []
    for item in args.record:
        name, _, ip = item.partition("=")
        address = selves.get(ip, ip)
        if address:
            records.append((name.lower().rstrip("."), address))
    # "::" is dual stack (bindv6only is 0 in a container's netns): IPv4 clients too.
    anywhere = "::" if selves["self6"] else ""

    class Body(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain")
            return args.body.encode() + b"\n"

    reactor = global_reactor()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    reactor.listenTCP(80, cast(ServerFactory, web.Site(Body())), 50, anywhere)
    if not args.http_only:
        write_samples(args.exports, args.sample)
        factory = server.DNSServerFactory(authorities=[ClusterRecords(records)])
        reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), anywhere, 8192)
        reactor.listenTCP(53, factory, 50, anywhere)
        options = agent.Options()
        options.parseOptions(["--root", args.exports, "--listen", f"tcp:{args.agent_port}"])
        agent.makeService(options, reactor).startService()
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
