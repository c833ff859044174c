# -*- test-case-name: tests.test_cli_demo -*-
"""
The embedded demo "cluster": one process in a container of the telenet image serving

- HTTP on port 80: every GET answers the ``--body`` text (the ``echo`` service);
- DNS on port 53 (UDP and TCP): A records for the ``--record NAME=IP`` names (``self`` is this
  container's address), NXDOMAIN for anything else;
- raw SFTP on port 8022 (``telenet.agent``, the traffic-agent's part): ``--exports`` as
  ``/tel_app_exports``, with sample files of the ``--sample`` container.

    python3 -m telenet.democluster --body TEXT --record echo.default.svc.cluster.local=self \
        --exports /exports --sample echo

It prints ``ready`` once everything listens.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any, cast

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


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import defer
    from twisted.internet.protocol import ServerFactory
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.names import dns, error, server
    from twisted.names.common import ResolverBase
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
    args = parser.parse_args(argv)
    me = socket.gethostbyname(socket.gethostname())
    records = {}
    for item in args.record:
        name, _, ip = item.partition("=")
        records[name.lower().rstrip(".")] = me if ip == "self" else ip

    class Records(ResolverBase):
        def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
            key = name.decode("ascii", "replace").lower().rstrip(".")
            address = records.get(key)
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

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain")
            return args.body.encode() + b"\n"

    reactor = global_reactor()
    write_samples(args.exports, args.sample)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    factory = server.DNSServerFactory(authorities=[Records()])
    reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), "", 8192)
    reactor.listenTCP(53, factory, 50, "")
    reactor.listenTCP(80, cast(ServerFactory, web.Site(Body())), 50, "")
    options = agent.Options()
    options.parseOptions(["--root", args.exports, "--listen", f"tcp:{args.agent_port}"])
    agent.makeService(options, reactor).startService()
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
