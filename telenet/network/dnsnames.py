# -*- test-case-name: tests.test_dns -*-
"""
Which name the daemon's DNS asks the cluster for, given the name a client asked: the rules
that make a container resolve names as a pod of the connected namespace does.

- a name under a cluster domain is the cluster's, and only the cluster's;
- a single label is a service of the connected namespace: ``echo`` is asked as
  ``echo.<namespace>.svc.<domain>``;
- ``name.ns`` is a service of namespace ``ns``: ``name.ns.svc.<domain>``, for any namespace
  when no mapped namespaces are given, else only for those and the connected one;
- ``name.ns.svc`` is ``name.ns.svc.<domain>``;
- ``<anything>.tel2-search`` is ``<anything>`` by the rules above, and only the cluster's
  (Telepresence's search domain);
- the reverse name (``in-addr.arpa``, ``ip6.arpa``) of an address in a routed subnet is the
  cluster's;
- leading service labels (``_http._tcp.``) ride along: ``_http._tcp.echo`` is asked as
  ``_http._tcp.echo.<namespace>.svc.<domain>``.

A short name the cluster does not know goes on to the daemon's own resolver, as a pod's search
list ends with the name itself; a name the cluster knows is answered by the cluster alone, so a
name that is both a cluster and a public name resolves as the cluster's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

import attrs

from telenet.core.netip import Address, Network

TEL2_SEARCH = "tel2-search"
DEFAULT_NAMESPACE = "default"


def normal(name: bytes | str) -> str:
    """``name`` as text, lower case, without the final dot."""
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return text.rstrip(".").lower()


def in_domains(name: bytes | str, domains: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``domains`` or below one (case-insensitive, dots ignored)."""
    text = normal(name)
    for domain in domains:
        d = normal(domain)
        if d and (text == d or text.endswith("." + d)):
            return True
    return False


def reverse_address(name: str) -> Address | None:
    """The address a reverse name (``4.3.2.1.in-addr.arpa``, nibbles of ``ip6.arpa``) names."""
    labels = normal(name).split(".")
    try:
        if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
            return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
            nibbles = "".join(reversed(labels[:32]))
            return ipaddress.IPv6Address(int(nibbles, 16))
    except ValueError:
        return None
    return None


@attrs.frozen
class Route:
    """
    Where a name goes: ``cluster_name`` is asked of the cluster (None: not at all); when
    ``final``, the cluster's answer (NXDOMAIN included) is the answer, else a name the cluster
    does not know is asked of the daemon's own resolver as the client spelt it.
    """

    cluster_name: str | None
    final: bool


_NOT_OURS = Route(None, False)
_NO_SUCH_NAME = Route(None, True)


@attrs.define
class ClusterNames:
    """
    The rules of the module docstring for the cluster ``domains`` (the first is the one short
    names are completed with), the connected ``namespace`` and the ``mapped`` namespaces;
    ``routes`` gives the routed subnets, whose reverse names are the cluster's.
    """

    domains: Sequence[str]
    namespace: str = DEFAULT_NAMESPACE
    mapped: Sequence[str] = ()
    routes: Callable[[], Sequence[Network]] = list

    def __attrs_post_init__(self) -> None:
        self.domains = [normal(d) for d in self.domains if normal(d)]
        self.namespace = normal(self.namespace) or DEFAULT_NAMESPACE
        self.mapped = [normal(n) for n in self.mapped if normal(n)]

    def knows_namespace(self, namespace: str) -> bool:
        """Without mapped namespaces every namespace may be the cluster's; else those only."""
        return not self.mapped or namespace in self.mapped or namespace == self.namespace

    def search(self) -> list[str]:
        """The search domains that make a stub resolver complete short names as a pod does."""
        if not self.domains:
            return []
        domain = self.domains[0]
        return [f"{self.namespace}.svc.{domain}", f"svc.{domain}", domain, TEL2_SEARCH]

    def route(self, name: bytes | str) -> Route:
        """Where the name a client asked goes (L{Route})."""
        text = normal(name)
        if not text:
            return _NOT_OURS
        if in_domains(text, self.domains):
            return Route(text, True)
        address = reverse_address(text)
        if address is not None:
            routed = any(address in net for net in self.routes() if net.version == address.version)
            return Route(text, True) if routed else _NOT_OURS
        if not self.domains:
            return _NOT_OURS
        labels = text.split(".")
        service = 0
        while service < len(labels) - 1 and labels[service].startswith("_"):
            service += 1
        prefix, rest = labels[:service], labels[service:]
        searched = rest[-1] == TEL2_SEARCH
        if searched:
            rest = rest[:-1]
        full = self._complete(rest)
        if full is None:
            return _NO_SUCH_NAME if searched else _NOT_OURS
        return Route(".".join([*prefix, *full]), searched)

    def _complete(self, labels: list[str]) -> list[str] | None:
        domain = self.domains[0]
        if len(labels) == 1:
            return [labels[0], self.namespace, "svc", domain]
        if len(labels) == 2 and labels[1] != "svc" and self.knows_namespace(labels[1]):
            return [*labels, "svc", domain]
        if len(labels) == 3 and labels[2] == "svc" and self.knows_namespace(labels[1]):
            return [*labels, domain]
        return None
