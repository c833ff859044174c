"""The daemon's DNS: cluster domains to the cluster DNS, everything else to its own resolver."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.names import client, common, dns
from twisted.names.error import DNSQueryTimeoutError, DomainError

from telenet.network.dns import (
    DNSService,
    SplitResolver,
    make_factory,
    make_resolver,
    parse_server,
)
from telenet.network.dnsnames import ClusterNames, in_domains, reverse_address
from tests.conftest import free_port
from tests.helpers import failure_of, result_of

A = ipaddress.ip_address


SOA = dns.Record_SOA(b"ns.dns.cluster.local", b"hostmaster.cluster.local", minimum=7, ttl=30)


class MemoryResolver(common.ResolverBase):
    """
    Answers from a dict ``{name: {type: [payload, ...]}}`` (each payload with its TTL), or of
    ``{name: ip}`` for A records; a name it does not have is NXDOMAIN with an SOA, as a real
    server's answer is (the failure holds the message, as ``client.Resolver``'s do); a name it
    has without that type is an empty answer with the SOA. Records what it was asked.
    """

    def __init__(self, records: dict[str, Any], soa: dns.Record_SOA | None = SOA) -> None:
        super().__init__()
        self.records: dict[str, dict[int, list[Any]]] = {
            name: value if isinstance(value, dict) else {dns.A: [dns.Record_A(value, 30)]}
            for name, value in records.items()
        }
        self.soa = soa
        self.asked: list[str] = []

    def _authority(self) -> list[dns.RRHeader]:
        if self.soa is None:
            return []
        return [dns.RRHeader(b"cluster.local", dns.SOA, dns.IN, self.soa.ttl, self.soa)]

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        text = name.decode()
        self.asked.append(text)
        types = self.records.get(text.lower().rstrip("."))
        if types is None:
            message = dns.Message(rCode=dns.ENAME)
            message.authority = self._authority()
            return defer.fail(DomainError(message))
        answers = [
            dns.RRHeader(name, payload.TYPE, dns.IN, payload.ttl, payload)
            for kind, payloads in types.items()
            if kind == type or type == dns.ALL_RECORDS
            for payload in payloads
        ]
        return defer.succeed((answers, [] if answers else self._authority(), []))


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
    """
    Cluster names go to the cluster resolver only; a public name straight to the fallback; a
    single label the cluster does not have is asked of the cluster first, then of the fallback.
    """
    cluster, fallback, split = resolvers
    answers, _, _ = result_of(split.lookupAddress("echo.default.svc.cluster.local"))
    assert answers[0].payload.dottedQuad() == "10.96.0.42"
    answers, _, _ = result_of(split.lookupAddress("api.corp.example"))
    assert answers[0].payload.dottedQuad() == "10.96.0.43"
    answers, _, _ = result_of(split.lookupAddress("example.org"))
    assert answers[0].payload.dottedQuad() == "93.184.216.34"
    answers, _, _ = result_of(split.lookupAddress("tn-daemon"))
    assert answers[0].payload.dottedQuad() == "172.17.0.2"
    assert cluster.asked == [
        "echo.default.svc.cluster.local",
        "api.corp.example",
        "example.org.svc.cluster.local",
        "tn-daemon.default.svc.cluster.local",
    ]
    assert fallback.asked == ["example.org", "tn-daemon"]


def test_unknown_cluster_name_not_sent_to_fallback(resolvers: Any) -> None:
    """A missing cluster name is NXDOMAIN from the cluster, not asked of the fallback."""
    cluster, fallback, split = resolvers
    failure_of(split.lookupAddress("nope.default.svc.cluster.local")).trap(DomainError)
    assert fallback.asked == []


def test_no_cluster_dns_uses_fallback() -> None:
    """Without --cluster-dns every name goes to the daemon's own resolver, as it was asked."""
    fallback = MemoryResolver({"echo.default.svc.cluster.local": "10.1.1.1", "echo": "10.1.1.2"})
    split = SplitResolver(["cluster.local"], None, fallback)
    answers, _, _ = result_of(split.lookupAddress("echo.default.svc.cluster.local"))
    assert answers[0].payload.dottedQuad() == "10.1.1.1"
    answers, _, _ = result_of(split.lookupAddress("echo"))
    assert answers[0].payload.dottedQuad() == "10.1.1.2"


# -- the names of the cluster, as a pod of the connected namespace has them

CLUSTER = {
    "echo.default.svc.cluster.local": {
        dns.A: [dns.Record_A("10.96.0.42", 30)],
        dns.AAAA: [dns.Record_AAAA("fd00::42", 30)],
        dns.TXT: [dns.Record_TXT(b"echo in default", ttl=30)],
    },
    "echo.other.svc.cluster.local": {dns.A: [dns.Record_A("10.96.0.50", 20)]},
    "_http._tcp.echo.default.svc.cluster.local": {
        dns.SRV: [dns.Record_SRV(0, 100, 80, b"echo.default.svc.cluster.local", 30)]
    },
    "web.default.svc.cluster.local": {
        dns.CNAME: [dns.Record_CNAME(b"echo.default.svc.cluster.local", 30)],
    },
    "mail.default.svc.cluster.local": {dns.MX: [dns.Record_MX(10, b"mx.default", 30)]},
    "42.0.96.10.in-addr.arpa": {dns.PTR: [dns.Record_PTR(b"echo.default.svc.cluster.local", 30)]},
    "example.default.svc.cluster.local": {dns.A: [dns.Record_A("10.96.0.60", 30)]},
}
PUBLIC = {
    "example": "198.51.100.1",
    "example.org": "93.184.216.34",
    "tn-daemon": "172.17.0.2",
    "50.0.96.10.in-addr.arpa": {dns.PTR: [dns.Record_PTR(b"public.example.org", 30)]},
    "echo.elsewhere": "198.51.100.2",
}


@pytest.fixture
def pod() -> tuple[MemoryResolver, MemoryResolver, SplitResolver, task.Clock]:
    """A split resolver with cluster names, namespace ``default``, a cache on a task.Clock."""
    cluster, fallback, clock = MemoryResolver(CLUSTER), MemoryResolver(PUBLIC), task.Clock()
    routes = [ipaddress.ip_network("10.96.0.0/16"), ipaddress.ip_network("fd00::/64")]
    names = ClusterNames(["cluster.local"], "default", (), lambda: routes)
    split = SplitResolver(["cluster.local"], cluster, fallback, names=names, clock=clock)
    return cluster, fallback, split, clock


def _answer(split: SplitResolver, name: str, type: int = dns.A) -> list[dns.RRHeader]:
    answers, _, _ = result_of(split.query(dns.Query(name, type, dns.IN)))
    return list(answers)


def _payloads(rrs: list[dns.RRHeader]) -> list[str]:
    return [str(rr.payload.dottedQuad()) if rr.type == dns.A else str(rr.payload) for rr in rrs]


@pytest.mark.parametrize(
    "asked,cluster_name",
    [
        ("echo", "echo.default.svc.cluster.local"),
        ("ECHO.", "echo.default.svc.cluster.local"),
        ("echo.default", "echo.default.svc.cluster.local"),
        ("echo.other", "echo.other.svc.cluster.local"),
        ("echo.tel2-search", "echo.default.svc.cluster.local"),
        ("echo.other.tel2-search", "echo.other.svc.cluster.local"),
        ("echo.default.svc", "echo.default.svc.cluster.local"),
        ("echo.default.svc.cluster.local", "echo.default.svc.cluster.local"),
    ],
)
def test_short_names_complete_in_the_namespace(pod: Any, asked: str, cluster_name: str) -> None:
    """A single label is the namespace's, ``name.ns`` any namespace's; records named as asked."""
    cluster, fallback, split, _ = pod
    answers = _answer(split, asked)
    assert cluster.asked == [cluster_name] and fallback.asked == []
    assert answers and all(rr.name.name == asked.encode() for rr in answers)


def test_namespace_of_the_connection() -> None:
    """``--namespace other``: single labels complete there."""
    cluster = MemoryResolver(CLUSTER)
    names = ClusterNames(["cluster.local"], "other")
    split = SplitResolver(["cluster.local"], cluster, MemoryResolver({}), names=names)
    assert _payloads(_answer(split, "echo")) == ["10.96.0.50"]
    assert cluster.asked == ["echo.other.svc.cluster.local"]


def test_mapped_namespaces_limit_name_dot_namespace() -> None:
    """With mapped namespaces, ``name.ns`` is the cluster's only for those and the connected one."""
    cluster, fallback = MemoryResolver(CLUSTER), MemoryResolver(PUBLIC)
    names = ClusterNames(["cluster.local"], "default", ["team-a"])
    split = SplitResolver(["cluster.local"], cluster, fallback, names=names)
    assert _payloads(_answer(split, "echo.default")) == ["10.96.0.42"]
    failure_of(split.lookupAddress("echo.other")).trap(DomainError)
    assert cluster.asked == ["echo.default.svc.cluster.local"]
    assert fallback.asked == ["echo.other"]
    assert names.route("echo.team-a").cluster_name == "echo.team-a.svc.cluster.local"


@pytest.mark.parametrize(
    "type,expected",
    [
        (dns.AAAA, ["<AAAA address=fd00::42 ttl=30>"]),
        (dns.TXT, ["<TXT data=['echo in default'] ttl=30>"]),
        (dns.MX, ["<MX preference=10 name=mx.default ttl=30>"]),
    ],
)
def test_record_types_pass_through(pod: Any, type: int, expected: list[str]) -> None:
    """AAAA, TXT, MX... of a short name come from the cluster, with its TTLs."""
    _, _, split, _ = pod
    name = "mail" if type == dns.MX else "echo"
    assert _payloads(_answer(split, name, type)) == expected


def test_srv_of_a_short_name(pod: Any) -> None:
    """``_http._tcp.echo`` is the SRV record of ``echo`` in the namespace, named as asked."""
    cluster, _, split, _ = pod
    answers = _answer(split, "_http._tcp.echo", dns.SRV)
    assert cluster.asked == ["_http._tcp.echo.default.svc.cluster.local"]
    assert [(rr.name.name, rr.payload.port) for rr in answers] == [(b"_http._tcp.echo", 80)]


def test_cname_chain_keeps_its_target(pod: Any) -> None:
    """A CNAME is renamed as asked at its owner, its target stays the cluster's name."""
    _, _, split, _ = pod
    [rr] = _answer(split, "web", dns.CNAME)
    assert rr.name.name == b"web" and rr.payload.name.name == b"echo.default.svc.cluster.local"


def test_ptr_of_routed_addresses_from_the_cluster(pod: Any) -> None:
    """Reverse names of addresses in a routed subnet are the cluster's; others the fallback's."""
    cluster, fallback, split, _ = pod
    [rr] = _answer(split, "42.0.96.10.in-addr.arpa", dns.PTR)
    assert rr.payload.name.name == b"echo.default.svc.cluster.local"
    failure_of(split.lookupPointer("50.0.96.10.in-addr.arpa")).trap(DomainError)
    assert fallback.asked == []
    failure_of(split.lookupPointer("1.0.0.127.in-addr.arpa")).trap(DomainError)
    assert fallback.asked == ["1.0.0.127.in-addr.arpa"]


def test_reverse_names() -> None:
    """in-addr.arpa and the nibbles of ip6.arpa name addresses; anything else does not."""
    assert reverse_address("4.3.2.10.in-addr.arpa.") == A("10.2.3.4")
    assert reverse_address(A("fd00::42").reverse_pointer) == A("fd00::42")
    assert reverse_address(A("fd00::42").reverse_pointer[2:]) is None
    assert reverse_address("3.2.10.in-addr.arpa") is None
    assert reverse_address("x.3.2.10.in-addr.arpa") is None


def test_cluster_wins_over_public(pod: Any) -> None:
    """A name both the cluster and the public resolver know resolves as the cluster's."""
    cluster, fallback, split, _ = pod
    assert _payloads(_answer(split, "example")) == ["10.96.0.60"]
    assert fallback.asked == []


def test_public_names_from_the_fallback(pod: Any) -> None:
    """Names the cluster does not have resolve as the client spelt them, from the fallback."""
    _, fallback, split, _ = pod
    assert _payloads(_answer(split, "tn-daemon")) == ["172.17.0.2"]
    assert _payloads(_answer(split, "echo.elsewhere")) == ["198.51.100.2"]
    assert _payloads(_answer(split, "example.org")) == ["93.184.216.34"]
    assert fallback.asked == ["tn-daemon", "echo.elsewhere", "example.org"]


def test_tel2_search_is_the_clusters_only(pod: Any) -> None:
    """``x.tel2-search`` unknown to the cluster is NXDOMAIN, never asked of the fallback."""
    _, fallback, split, _ = pod
    failure_of(split.lookupAddress("tn-daemon.tel2-search")).trap(DomainError)
    failure_of(split.lookupAddress("a.b.c.tel2-search")).trap(DomainError)
    assert fallback.asked == []


def test_empty_answer_of_a_cluster_name_is_final(pod: Any) -> None:
    """The cluster knows ``echo`` but has no MX for it: the answer is empty, not the public one."""
    _, fallback, split, _ = pod
    assert _answer(split, "echo", dns.MX) == []
    assert fallback.asked == []


def test_cache_keeps_answers_for_their_ttl(pod: Any) -> None:
    """Answers are kept for their TTL, which counts down; then the cluster is asked again."""
    cluster, _, split, clock = pod
    assert [rr.ttl for rr in _answer(split, "echo.other")] == [20]
    clock.advance(15)
    assert [rr.ttl for rr in _answer(split, "echo.other")] == [5]
    assert cluster.asked == ["echo.other.svc.cluster.local"]
    clock.advance(5)
    assert [rr.ttl for rr in _answer(split, "echo.other")] == [20]
    assert len(cluster.asked) == 2


def test_cache_keeps_nxdomain_for_the_soa_minimum(pod: Any) -> None:
    """NXDOMAIN is kept for the SOA's minimum (7 s here, its TTL being 30)."""
    cluster, fallback, split, clock = pod
    for _ in range(2):
        failure_of(split.lookupAddress("nope.default.svc.cluster.local")).trap(DomainError)
    assert cluster.asked == ["nope.default.svc.cluster.local"]
    clock.advance(7)
    failure_of(split.lookupAddress("nope.default.svc.cluster.local")).trap(DomainError)
    assert len(cluster.asked) == 2
    # A short name's NXDOMAIN is kept too; the fallback is asked each time.
    _answer(split, "tn-daemon")
    _answer(split, "tn-daemon")
    assert cluster.asked.count("tn-daemon.default.svc.cluster.local") == 1
    assert fallback.asked == ["tn-daemon", "tn-daemon"]


def test_cache_keeps_empty_answers_for_the_soa_minimum(pod: Any) -> None:
    """An empty answer (the name without that type) is kept for the SOA minimum as well."""
    cluster, _, split, clock = pod
    _answer(split, "echo", dns.MX)
    _answer(split, "echo", dns.MX)
    assert cluster.asked == ["echo.default.svc.cluster.local"]
    clock.advance(7)
    _answer(split, "echo", dns.MX)
    assert len(cluster.asked) == 2


def test_no_soa_no_negative_cache() -> None:
    """NXDOMAIN without an SOA, and failures that are not NXDOMAIN, are not kept."""
    cluster = MemoryResolver(CLUSTER, soa=None)
    clock = task.Clock()
    split = SplitResolver(["cluster.local"], cluster, MemoryResolver({}), clock=clock)
    for _ in range(2):
        failure_of(split.lookupAddress("nope.default.svc.cluster.local")).trap(DomainError)
    assert len(cluster.asked) == 2

    class Timeouts(common.ResolverBase):
        asked = 0

        def _lookup(self, *args: Any) -> defer.Deferred[Any]:
            Timeouts.asked += 1
            return defer.fail(DNSQueryTimeoutError(None))

    split = SplitResolver(["cluster.local"], Timeouts(), MemoryResolver({}), clock=clock)
    for _ in range(2):
        failure_of(split.lookupAddress("x.cluster.local")).trap(DNSQueryTimeoutError)
    assert Timeouts.asked == 2


def test_cache_flushed_when_routes_or_namespaces_change(pod: Any) -> None:
    """flush (routes changed) and set_namespaces forget every kept answer."""
    cluster, _, split, _ = pod
    _answer(split, "echo")
    split.flush()
    _answer(split, "echo")
    assert len(cluster.asked) == 2
    split.set_namespaces("other", ["other"])
    assert _payloads(_answer(split, "echo")) == ["10.96.0.50"]
    assert split.names.mapped == ["other"]
    assert cluster.asked[-1] == "echo.other.svc.cluster.local"


def test_server_answers_short_names_as_asked(pod: Any) -> None:
    """Through the DNS server: the question and the answer's records are the name asked."""
    _, _, split, _ = pod
    reply = _ask(make_factory(split), "echo.other")
    assert [q.name.name for q in reply.queries] == [b"echo.other"]
    assert [(rr.name.name, _quad(rr)) for rr in reply.answers] == [(b"echo.other", "10.96.0.50")]


def test_silent_cluster_gives_way_to_the_fallback_in_seconds() -> None:
    """A cluster that does not answer: short names reach the fallback after 3 s, not a minute."""
    timeouts: list[Any] = []

    class Silent(common.ResolverBase):
        def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
            timeouts.append(timeout)
            return defer.fail(DNSQueryTimeoutError(name))

    split = SplitResolver(["cluster.local"], Silent(), MemoryResolver(PUBLIC))
    assert _payloads(_answer(split, "tn-daemon")) == ["172.17.0.2"]
    assert timeouts == [(1, 2)]


def test_search_domains() -> None:
    """Search domains that complete short names as a pod's resolv.conf does."""
    names = ClusterNames(["Cluster.Local."], "team-a")
    assert names.search() == [
        "team-a.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "tel2-search",
    ]
    assert ClusterNames([]).search() == []


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
    cluster, fallback = split.backend("a.cluster.local"), split.backend("www.example.org")
    assert cluster is split.cache and split.cache is not None
    cluster = split.cache.resolver
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
