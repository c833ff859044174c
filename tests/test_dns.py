"""The daemon's DNS: cluster domains to the cluster DNS, everything else to its own resolver."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.names import client, common, dns
from twisted.names.error import DomainError

from telenet.network.dns import (
    DNSService,
    SplitResolver,
    in_domains,
    make_factory,
    make_resolver,
    parse_server,
)
from tests.conftest import free_port
from tests.helpers import failure_of, result_of

A = ipaddress.ip_address


class MemoryResolver(common.ResolverBase):
    """Answers A queries from a dict; anything else is NXDOMAIN. Records what it was asked."""

    def __init__(self, records: dict[str, str]) -> None:
        super().__init__()
        self.records = records
        self.asked: list[str] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        text = name.decode()
        self.asked.append(text)
        if text in self.records and type == dns.A:
            rr = dns.RRHeader(name, dns.A, dns.IN, 30, dns.Record_A(self.records[text], 30))
            return defer.succeed(([rr], [], []))
        return defer.fail(DomainError(name))


@pytest.fixture
def resolvers() -> tuple[MemoryResolver, MemoryResolver, SplitResolver]:
    cluster = MemoryResolver(
        {"echo.default.svc.cluster.local": "10.96.0.42", "api.corp.example": "10.96.0.43"}
    )
    fallback = MemoryResolver({"tn-daemon": "172.17.0.2", "example.org": "93.184.216.34"})
    return cluster, fallback, SplitResolver(["cluster.local", "corp.example."], cluster, fallback)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("echo.default.svc.cluster.local", True),
        ("ECHO.Default.SVC.Cluster.Local.", True),
        ("cluster.local", True),
        ("notcluster.local", False),
        ("cluster.local.example.org", False),
        ("example.org", False),
        (b"x.svc.cluster.local", True),
    ],
)
def test_in_domains(name: str | bytes, expected: bool) -> None:
    """A name is in a domain when it is the domain or below it, ignoring case and dots."""
    assert in_domains(name, ["cluster.local"]) is expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("10.96.0.10", ("10.96.0.10", 53)),
        ("10.96.0.10:5353", ("10.96.0.10", 5353)),
        ("fd00::10", ("fd00::10", 53)),
        ("[fd00::10]:5353", ("fd00::10", 5353)),
    ],
)
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    """--cluster-dns takes an address, optionally with a port."""
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["kube-dns", "10.0.0.1:0", "10.0.0.1:x", "[fd00::1", ""])
def test_parse_server_rejects(text: str) -> None:
    """Names, bad ports and broken brackets are refused."""
    with pytest.raises(ValueError):
        parse_server(text)


def test_split_by_domain(resolvers: Any) -> None:
    """Cluster names go to the cluster resolver, the rest to the fallback, and only there."""
    cluster, fallback, split = resolvers
    answers, _, _ = result_of(split.lookupAddress("echo.default.svc.cluster.local"))
    assert answers[0].payload.dottedQuad() == "10.96.0.42"
    answers, _, _ = result_of(split.lookupAddress("api.corp.example"))
    assert answers[0].payload.dottedQuad() == "10.96.0.43"
    answers, _, _ = result_of(split.lookupAddress("tn-daemon"))
    assert answers[0].payload.dottedQuad() == "172.17.0.2"
    assert cluster.asked == ["echo.default.svc.cluster.local", "api.corp.example"]
    assert fallback.asked == ["tn-daemon"]


def test_unknown_cluster_name_not_sent_to_fallback(resolvers: Any) -> None:
    """A missing cluster name is NXDOMAIN from the cluster, not asked of the fallback."""
    cluster, fallback, split = resolvers
    failure_of(split.lookupAddress("nope.default.svc.cluster.local")).trap(DomainError)
    assert fallback.asked == []


def test_no_cluster_dns_uses_fallback() -> None:
    """Without --cluster-dns even cluster names go to the daemon's own resolver."""
    fallback = MemoryResolver({"echo.default.svc.cluster.local": "10.1.1.1"})
    split = SplitResolver(["cluster.local"], None, fallback)
    answers, _, _ = result_of(split.lookupAddress("echo.default.svc.cluster.local"))
    assert answers[0].payload.dottedQuad() == "10.1.1.1"


class RecordingProtocol:
    """Stands in for DNSDatagramProtocol: keeps what the server writes back."""

    def __init__(self) -> None:
        self.sent: list[tuple[dns.Message, Any]] = []
        self.transport = None

    def writeMessage(self, message: dns.Message, address: Any) -> None:  # noqa: N802
        self.sent.append((message, address))


def _quad(rr: Any) -> str:
    return str(rr.payload.dottedQuad())


def _ask(factory: Any, name: str) -> dns.Message:
    query = dns.Message(id=7, recDes=True)
    query.addQuery(name.encode(), dns.A)
    proto = RecordingProtocol()
    factory.messageReceived(query, proto, ("172.30.0.5", 40000))
    assert len(proto.sent) == 1
    reply, address = proto.sent[0]
    assert address == ("172.30.0.5", 40000) and reply.id == 7 and reply.answer
    return reply


def test_server_answers_through_split_resolver(resolvers: Any) -> None:
    """The DNS server factory answers from the split resolver, NXDOMAIN for unknown names."""
    _, _, split = resolvers
    factory = make_factory(split)
    reply = _ask(factory, "echo.default.svc.cluster.local")
    assert reply.rCode == dns.OK and reply.recAv
    assert [_quad(rr) for rr in reply.answers] == ["10.96.0.42"]
    assert _quad(_ask(factory, "example.org").answers[0]) == "93.184.216.34"
    assert _ask(factory, "missing.example.org").rCode == dns.ENAME


def test_make_resolver(tmp_path: Any) -> None:
    """make_resolver asks --cluster-dns for cluster names and resolv.conf's servers otherwise."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.11\noptions ndots:0\n")
    reactor = MemoryReactorClock()
    split = make_resolver(["cluster.local"], "10.96.0.10", reactor, resolv_conf=str(conf))
    cluster, fallback = split.backend("a.cluster.local"), split.backend("example.org")
    assert isinstance(cluster, client.Resolver) and isinstance(fallback, client.Resolver)
    assert cluster.servers == [("10.96.0.10", 53)]
    assert list(fallback.dynServers) == [("127.0.0.11", 53)]
    # resolv.conf is read again within seconds: Docker rewrites it on network connect.
    assert [c.getTime() for c in reactor.getDelayedCalls()] == [5]


def test_service_listens_when_address_learned() -> None:
    """Nothing listens until the daemon's address is known; then UDP and TCP on it, freebind."""
    reactor = MemoryReactor()
    svc = DNSService(reactor, make_factory(SplitResolver([], None, MemoryResolver({}))), port=0)
    svc.startService()
    assert reactor.adoptedPorts == [] and svc.local_addresses == []
    # 192.0.2.53 is not on this machine: IP_FREEBIND lets us bind before it exists.
    svc.listen([A("192.0.2.53"), None])
    families = [entry[1] for entry in reactor.adoptedPorts]
    assert families == [socket.AF_INET, socket.AF_INET]
    assert isinstance(reactor.adoptedPorts[0][2], dns.DNSDatagramProtocol)
    assert svc.local_addresses == ["192.0.2.53:0"]
    svc.listen([A("192.0.2.53")])
    assert len(reactor.adoptedPorts) == 2, "the same address is not bound twice"
    svc.listen([A("192.0.2.54"), A("2001:db8::53")])
    assert len(reactor.adoptedPorts) == 6
    assert svc.local_addresses == ["192.0.2.54:0", "[2001:db8::53]:0"]
    result_of(svc.stopService())


def test_service_bind_failure_is_logged_not_fatal() -> None:
    """An address that cannot be bound (port taken) is skipped; the daemon keeps running."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        reactor = MemoryReactor()
        svc = DNSService(
            reactor, make_factory(SplitResolver([], None, MemoryResolver({}))), port=port
        )
        svc.listen([A("127.0.0.1")])
        svc.startService()
        assert reactor.adoptedPorts == [] and svc.local_addresses == []
    finally:
        taken.close()


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_real_udp_and_tcp_on_loopback(resolvers: Any) -> None:
    """A real client gets answers over UDP and TCP from the server on a loopback port."""
    from twisted.internet import reactor

    _, _, split = resolvers
    port = free_port()
    svc = DNSService(reactor, make_factory(split), port=port)
    svc.listen([A("127.0.0.1")])
    svc.startService()
    try:
        resolver = client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor)
        answers, _, _ = await resolver.lookupAddress("echo.default.svc.cluster.local", timeout=[2])
        assert answers[0].payload.dottedQuad() == "10.96.0.42"
        query = dns.Query(b"example.org", dns.A, dns.IN)
        tcp = await resolver.queryTCP([query], timeout=5)
        assert tcp.answers[0].payload.dottedQuad() == "93.184.216.34"
    finally:
        await svc.stopService()
