# -*- test-case-name: tests.test_dns -*-
"""
The daemon's DNS server: containers on the teleroute network use it as ``--dns``.

Names under a cluster domain (``--cluster-domain``, default ``cluster.local``), short names of
the connected and mapped namespaces (``echo``, ``echo.other``, ``echo.tel2-search``: the rules
of ``telenet.network.dnsnames``) and reverse names of routed addresses are asked of the
cluster's DNS server (``--cluster-dns``), through a cache that keeps the cluster's TTLs
(``telenet.network.dnscache``); the records of a completed name are renamed back to the name
the client asked. Every other name, and a short name the cluster does not know, goes to the
daemon's own resolver from ``/etc/resolv.conf`` (Docker's embedded DNS inside a container), so
public and Docker names keep resolving (the problem Telepresence fixed with a fallback in PR
#3924).

The server listens on the daemon's own teleroute address, port 53, UDP and TCP. That address
is only learned when the daemon's endpoint is created and only configured on ``tpd-0``
after Join, so the sockets are bound with ``IP_FREEBIND``: they listen before the address
exists.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import client, common, dns, server
from twisted.names.error import DomainError
from zope.interface import implementer

from telenet.core.netip import Address, Network
from telenet.core.reactor import IReactor
from telenet.network.dnscache import CachingResolver
from telenet.network.dnsnames import DEFAULT_NAMESPACE, ClusterNames, normal

log = Logger()

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DNS_PORT = 53
#: Retries of a query to the cluster's DNS (seconds each), when the server gives none.
CLUSTER_TIMEOUT = (1, 2)
_IP_FREEBIND = 15  # linux/in.h
_IPV6_FREEBIND = 78  # linux/in6.h


def _rename(result: Any, asked_as: str, asked: bytes) -> Any:
    """The cluster's answer with the records of the name it was asked as named as the client
    asked: a stub resolver drops records whose name is not the one it asked for."""
    if asked_as == normal(asked):
        return result

    def rename(rrs: list[dns.RRHeader]) -> list[dns.RRHeader]:
        return [
            dns.RRHeader(asked, rr.type, rr.cls, rr.ttl, rr.payload, rr.auth)
            if normal(rr.name.name) == asked_as
            else rr
            for rr in rrs
        ]

    answers, authority, additional = result
    return rename(answers), authority, rename(additional)


@implementer(IResolver)
class SplitResolver(common.ResolverBase):
    """
    I answer each name by the rules of ``names`` (L{ClusterNames}): from ``cluster`` (kept in
    a L{CachingResolver}) or from ``fallback``, the daemon's own resolver.

    Without a cluster resolver, every name goes to the fallback, as the client spelt it.
    """

    def __init__(
        self,
        domains: Sequence[str],
        cluster: IResolver | None,
        fallback: IResolver,
        *,
        names: ClusterNames | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self.names = names if names is not None else ClusterNames(domains)
        self.cache: CachingResolver | None = None
        if cluster is not None and clock is not None:
            self.cache = CachingResolver(cluster, clock)
            cluster = self.cache
        self.cluster = cluster
        self.fallback = fallback

    @property
    def domains(self) -> list[str]:
        return list(self.names.domains)

    def flush(self) -> None:
        """Forget every cached answer (the routes or namespaces changed)."""
        if self.cache is not None:
            self.cache.flush()

    def set_namespaces(self, namespace: str, mapped: Sequence[str]) -> None:
        """Complete short names in ``namespace``, ``name.ns`` in ``mapped``; flushes the cache."""
        self.names = ClusterNames(self.names.domains, namespace, mapped, self.names.routes)
        self.flush()

    def backend(self, name: bytes | str) -> IResolver:
        """Who is asked first for ``name``."""
        if self.cluster is not None and self.names.route(name).cluster_name is not None:
            return self.cluster
        return self.fallback

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        query = dns.Query(name, type, cls)
        if self.cluster is None:
            return self.fallback.query(query, timeout)
        route = self.names.route(name)
        if route.cluster_name is None:
            if route.final:
                return defer.fail(DomainError(name))
            return self.fallback.query(query, timeout)
        asked_as = route.cluster_name
        # Twisted's default retries for a minute; a stub resolver gives up after 5 s, and a
        # short public name must reach the fallback before that when the cluster is silent.
        cluster_timeout = timeout if timeout is not None else CLUSTER_TIMEOUT
        d = self.cluster.query(dns.Query(asked_as.encode("ascii"), type, cls), cluster_timeout)
        d.addCallback(_rename, asked_as, name)
        if not route.final:
            # A short name the cluster does not know: the name itself, as a pod's search ends.
            d.addErrback(lambda _: self.fallback.query(query, timeout))
        return d


class _ResolvConfResolver(client.Resolver):
    # Docker rewrites resolv.conf when the container joins a user-defined network (it
    # switches to the embedded DNS, 127.0.0.11): notice within seconds, not the default 60.
    _resolvReadInterval = 5


def parse_server(text: str, default_port: int = DNS_PORT) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[V6]:PORT`` as (address, port); ValueError if bad."""
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad DNS server address {text!r}")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in DNS server address {text!r}")
    return host, port


def make_resolver(
    domains: Sequence[str],
    cluster_dns: str | None,
    reactor: IReactor,
    resolv_conf: str = "/etc/resolv.conf",
    namespace: str = DEFAULT_NAMESPACE,
    mapped: Sequence[str] = (),
    routes: Callable[[], Sequence[Network]] = list,
) -> SplitResolver:
    """
    The daemon's resolver: ``cluster_dns`` (cached) for the cluster's names by the rules of
    L{ClusterNames}, resolv.conf for the others.
    """
    cluster = None
    if cluster_dns:
        cluster = client.Resolver(servers=[parse_server(cluster_dns)], reactor=reactor)
    fallback = _ResolvConfResolver(resolv=resolv_conf, reactor=reactor)
    names = ClusterNames(domains, namespace, mapped, routes)
    return SplitResolver(domains, cluster, fallback, names=names, clock=reactor)


def make_factory(resolver: IResolver) -> server.DNSServerFactory:
    """A DNS server answering every query (recursively) from ``resolver``."""
    factory = server.DNSServerFactory(clients=[resolver])
    factory.noisy = False
    return factory


def _socket(address: Address, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(address), port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        return sock
    except BaseException:
        sock.close()
        raise


class DNSService(service.Service):
    """
    Serves ``factory`` on UDP and TCP port ``port`` of the addresses given to ``listen``
    (the daemon's teleroute addresses); a later ``listen`` replaces the earlier addresses.
    """

    def __init__(
        self, reactor: IReactor, factory: server.DNSServerFactory, port: int = DNS_PORT
    ) -> None:
        self.reactor = reactor
        self.factory = factory
        self.port = port
        self.addresses: list[Address] = []
        self._ports: list[IListeningPort] = []

    @property
    def local_addresses(self) -> list[str]:
        """Where the server listens, as ``ip:port`` / ``[ip]:port``."""
        return [
            f"{a}:{self.port}" if a.version == 4 else f"[{a}]:{self.port}" for a in self.addresses
        ]

    def listen(self, addresses: Iterable[Address | None]) -> None:
        """Listen on these addresses (None entries are skipped) instead of earlier ones."""
        wanted = [a for a in addresses if a is not None]
        if wanted == self.addresses:
            return
        self._close()
        self.addresses = wanted
        if self.running:
            self._open()

    def _open(self) -> None:
        bound: list[Address] = []
        for address in self.addresses:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            try:
                udp = _socket(address, self.port, socket.SOCK_DGRAM)
                tcp = _socket(address, self.port, socket.SOCK_STREAM)
            except OSError as e:
                log.error(
                    "DNS cannot listen on {address} port {port}: {error}",
                    address=str(address),
                    port=self.port,
                    error=e.strerror or errno.errorcode.get(e.errno or 0, str(e)),
                )
                continue
            with udp, tcp:
                protocol = dns.DNSDatagramProtocol(self.factory)
                self._ports.append(
                    self.reactor.adoptDatagramPort(
                        udp.fileno(), family, protocol, maxPacketSize=65535
                    )
                )
                self._ports.append(self.reactor.adoptStreamPort(tcp.fileno(), family, self.factory))
            bound.append(address)
            log.info(
                "DNS listening on {address} port {port} (UDP and TCP)",
                address=str(address),
                port=self.port,
            )
        self.addresses = bound

    def _close(self) -> defer.Deferred[None]:
        ports, self._ports = self._ports, []
        stops = [defer.maybeDeferred(p.stopListening) for p in ports]
        return defer.gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    def startService(self) -> None:
        super().startService()
        self._open()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self._close()
