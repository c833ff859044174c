# -*- test-case-name: tests.test_daemon -*-
"""
``twistd telepresence-daemon``: the daemon container's side of teleroute.

    twistd -n telepresence-daemon [--vif IFACE | --vif-subnet CIDR ...] [--subnet CIDR ...]
        [--cluster-domain D ...] [--cluster-dns ADDR] [--namespace NS]
        [--mapped-namespace NS ...] [--teleroute-port 4039] [--control ENDPOINT]

One process, on Twisted's asyncio reactor (installed here, so no ``--reactor`` is needed):

- the teleroute gRPC service (``telenet.teleroute.service``) on ``--teleroute-port``, with the
  ``br-daemon`` bridge and the veth pairs of the containers on the teleroute network;
- the routed subnets: ``--subnet`` plus the kernel routes through the VIF, watched live,
  with forwarding and masquerading toward it (``telenet.network.vif``); the VIF is ``--vif``, or the
  interface holding an address in ``--vif-subnet`` (the subnet of the Docker network the
  container is connected to as its VIF: Docker's interface names follow no order we know);
- DNS on the daemon's teleroute address, port 53 (``telenet.network.dns``), bound as soon as the
  daemon's own endpoint is created;
- the control API for the CLI (``telenet.network.control``) on ``--control``, with SFTP bridges.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

import telenet
from telenet.core.gocompat import is_namespace
from telenet.core.interfaces import INetlink
from telenet.core.logoptions import LogOptionsMixin
from telenet.core.netip import Network
from telenet.core.reactor import IReactor, global_reactor
from telenet.network.dns import DEFAULT_CLUSTER_DOMAIN, parse_server
from telenet.network.dnsnames import DEFAULT_NAMESPACE, in_domains

log = Logger()

DEFAULT_TELEROUTE_PORT = 4039
DEFAULT_CONTROL = "tcp:4038:interface=127.0.0.1"


class Options(LogOptionsMixin, usage.Options):
    synopsis = (
        "[--vif IFACE | --vif-subnet CIDR ...] [--subnet CIDR ...] "
        "[--cluster-domain D ...] [--cluster-dns ADDR] [--namespace NS] "
        "[--mapped-namespace NS ...]"
    )
    longdesc = (
        "The Telepresence daemon's teleroute side: veth pairs for the containers of a "
        "teleroute network, routes to the remote network behind --vif, DNS, and the "
        "control API."
    )

    optParameters = [
        [
            "vif",
            None,
            None,
            "Interface toward the remote network; the subnets routed through "
            "it are watched live and traffic leaving by it is masqueraded.",
        ],
        [
            "cluster-dns",
            None,
            None,
            "DNS server (ADDR or ADDR:PORT) for names under the cluster domains.",
        ],
        [
            "teleroute-port",
            None,
            str(DEFAULT_TELEROUTE_PORT),
            "Port of the teleroute gRPC service.",
        ],
        [
            "namespace",
            None,
            DEFAULT_NAMESPACE,
            "The connected namespace: single-label names resolve as its services.",
        ],
        ["control", None, DEFAULT_CONTROL, "Endpoint of the control API."],
        ["dns-port", None, "53", "DNS port on the daemon's teleroute addresses."],
        [
            "resolv-conf",
            None,
            "/etc/resolv.conf",
            "Resolver configuration for every name outside the cluster domains.",
        ],
        ["name", None, "telenet-daemon", "Daemon name sent to plug-ins in Connect."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["subnet"] = []
        self["vif-subnet"] = []
        self["cluster-domain"] = []
        self["mapped-namespace"] = []

    def opt_vif_subnet(self, value: str) -> None:
        """Instead of --vif: the VIF holds an address in this subnet (its network's). Repeatable."""
        try:
            self["vif-subnet"].append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise usage.UsageError(
                f"--vif-subnet {value!r} is not a CIDR like 172.19.0.0/16"
            ) from None

    def opt_subnet(self, value: str) -> None:
        """A subnet (CIDR) to route to, in addition to those through --vif. Repeatable."""
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise usage.UsageError(f"--subnet {value!r} is not a CIDR like 10.96.0.0/12") from None
        if network.prefixlen == 0:
            raise usage.UsageError("--subnet must not be a default route")
        self["subnet"].append(network)

    def opt_cluster_domain(self, value: str) -> None:
        """A domain resolved by --cluster-dns (default: cluster.local). Repeatable."""
        domain = value.strip().rstrip(".").lower()
        if not domain or " " in domain:
            raise usage.UsageError(f"--cluster-domain {value!r} is not a domain")
        self["cluster-domain"].append(domain)

    def opt_mapped_namespace(self, value: str) -> None:
        """
        A namespace whose services resolve as ``name.NS`` (default: any). Repeatable; a
        comma-separated list is several.
        """
        for item in value.split(","):
            self["mapped-namespace"].append(check_namespace(item, "--mapped-namespace"))

    def postOptions(self) -> None:
        super().postOptions()
        self["namespace"] = check_namespace(self["namespace"], "--namespace")
        if not self["cluster-domain"]:
            self["cluster-domain"] = [DEFAULT_CLUSTER_DOMAIN]
        for key in ("teleroute-port", "dns-port"):
            try:
                self[key] = int(self[key])
            except ValueError:
                raise usage.UsageError(f"--{key} must be a port number") from None
            if not 0 <= self[key] < 65536:
                raise usage.UsageError(f"--{key} must be between 0 and 65535")
        if self["cluster-dns"]:
            try:
                parse_server(self["cluster-dns"])
            except ValueError:
                raise usage.UsageError(
                    f"--cluster-dns {self['cluster-dns']!r} is not an IP "
                    "address (optionally with :PORT)"
                ) from None
        vif = self["vif"]
        if vif is not None and (not vif or len(vif) > 15 or "/" in vif or " " in vif):
            raise usage.UsageError(f"--vif {vif!r} is not an interface name")
        if vif is not None and self["vif-subnet"]:
            raise usage.UsageError("give --vif or --vif-subnet, not both")


def check_namespace(value: str, option: str) -> str:
    """A Kubernetes namespace name (a DNS label), lower case; UsageError otherwise."""
    name = value.strip().lower()
    if not is_namespace(name):
        raise usage.UsageError(
            f"{option} {value!r} is not a namespace name (lower-case letters, digits and -)"
        )
    return name


class _StopInReverse(service.MultiService):
    """
    A ``MultiService`` that stops its children one after the other, last started first.

    Twisted's stops them all at once: the netlink sockets were then closed under a
    CreateEndpoint still in flight, which hung until the gRPC grace ran out, was cancelled and
    left its veth pair behind.
    """

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("Stopping {name} failed", name=child.name)


class _Closer(service.Service):
    """Closes the netlink sockets last, once everything using them has stopped."""

    def __init__(self, netlink: INetlink) -> None:
        self.netlink = netlink

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.netlink.close()


def makeService(
    options: Options,
    reactor: IReactor | None = None,
    netlink: INetlink | None = None,
    sysctl_root: str = "/proc/sys",
) -> service.MultiService:
    """
    The daemon as one ``MultiService``. Children, started in this order and stopped in the
    reverse: ``netlink``, ``forwarding`` and ``vif-routes`` (with ``--vif``; with
    ``--vif-subnet``, ``vif``, which holds them once it found the interface), ``teleroute``,
    ``dns``, ``bridges``, ``control``.
    """
    if reactor is None:
        from telenet.core.aio import install_asyncio_reactor

        install_asyncio_reactor()
        reactor = global_reactor()
    from telenet.core.pluginadmin import LevelControl
    from telenet.core.processes import spawner
    from telenet.network.control import Bridges, control_site
    from telenet.network.dns import DNSService, make_factory, make_resolver
    from telenet.network.gateway import BridgeGateway
    from telenet.network.vif import Forwarding, RouteTable, VifRouteService, VifSelector
    from telenet.teleroute.service import BRIDGE, DST_PREFIX, GrpcServerService, TelerouteCore

    # The firewall is touched only on the real kernel (tests pass a fake netlink).
    real_kernel = netlink is None
    if netlink is None:
        from telenet.core.netlink import PyrouteNetlink

        netlink = PyrouteNetlink()

    top = _StopInReverse()

    def add(name: str, child: service.Service) -> None:
        child.setName(name)
        child.setServiceParent(top)

    add("netlink", _Closer(netlink))
    table = RouteTable(options["subnet"])

    def vif_services(name: str) -> list[tuple[str, service.Service]]:
        return [
            ("forwarding", Forwarding(name, spawner(reactor), sysctl_root=sysctl_root)),
            ("vif-routes", VifRouteService(netlink, name, table)),
        ]

    selector: VifSelector | None = None
    if options["vif"]:
        for name, child in vif_services(options["vif"]):
            add(name, child)
    elif options["vif-subnet"]:
        selector = VifSelector(netlink, options["vif-subnet"], vif_services, reactor)
        add("vif", selector)

    def vif() -> str | None:
        return selector.vif if selector is not None else options["vif"]

    core = TelerouteCore(netlink, table.current, name=options["name"])
    # Live routes: running workloads hear of every change (telenet/teleroute/routesfeed.py).
    table.subscribe(lambda _routes: core.routes_changed())
    port = options["teleroute-port"]

    def fatal() -> None:
        if reactor.running:
            reactor.stop()

    grpc_service = GrpcServerService(core, [f"[::]:{port}", f"0.0.0.0:{port}"], on_fatal=fatal)
    add("teleroute", grpc_service)
    if real_kernel:
        from telenet.network.guard import TelerouteGuard
        from telenet.teleroute import service as teleroute

        # The workloads on the teleroute network may open TCP connections to the daemon's
        # DNS only: not to gRPC, SFTP bridges or a TCP control API (telenet/network/guard.py).
        inward = [f"{teleroute.DST_PREFIX}*", teleroute.BRIDGE]
        add("guard", TelerouteGuard(inward, [options["dns-port"]], spawner(reactor)))
    gateway = BridgeGateway(netlink, reactor, bridge=BRIDGE, prefix=DST_PREFIX)
    core.on_daemon_address(gateway.daemon_address)
    add("gateway", gateway)

    resolver = make_resolver(
        options["cluster-domain"],
        options["cluster-dns"],
        reactor,
        resolv_conf=options["resolv-conf"],
        namespace=options["namespace"],
        mapped=options["mapped-namespace"],
        routes=table.current,
    )
    # Reverse names follow the routed subnets; what was kept may no longer be the cluster's.
    table.subscribe(lambda _routes: resolver.flush())
    dns_service = DNSService(reactor, make_factory(resolver), port=options["dns-port"])
    core.on_daemon_address(lambda v4, v6: dns_service.listen([v4, v6]))
    add("dns", dns_service)

    def open_bridge(host: str, agent_port: int) -> defer.Deferred[Any]:
        from telenet import sftpproxy

        return sftpproxy.open_bridge(reactor, "tcp:0", host, agent_port)

    bridges = Bridges(open_bridge)
    add("bridges", bridges)

    def status() -> dict[str, Any]:
        local = dns_service.local_addresses
        return {
            "version": telenet.__version__,
            "name": options["name"],
            "vif": vif(),
            "dns": {
                "local_address": local[0] if local else None,
                "local_addresses": local,
                "cluster_domains": options["cluster-domain"],
                "cluster_dns": options["cluster-dns"],
                "namespace": resolver.names.namespace,
                "mapped_namespaces": list(resolver.names.mapped),
                "search": resolver.names.search(),
            },
            "teleroute": {"port": grpc_service.port or port, **core.status()},
            "routes": [str(n) for n in table.current()],
            "bridges": bridges.describe(),
        }

    add(
        "control",
        strports.service(
            options["control"],
            control_site(status, bridges, reactor, levels=LevelControl(reactor), subnets=table),
            reactor=reactor,
        ),
    )
    _warn_overlaps(options["subnet"], options["cluster-domain"])
    vif_text = options["vif"] or (
        "in " + ", ".join(str(n) for n in options["vif-subnet"]) if options["vif-subnet"] else "-"
    )
    log.info(
        "telepresence-daemon {version}: vif {vif}, subnets {subnets}, cluster domains "
        "{domains} via {dns}, namespace {namespace}, mapped namespaces {mapped}",
        version=telenet.__version__,
        vif=vif_text,
        subnets=[str(s) for s in options["subnet"]],
        domains=options["cluster-domain"],
        dns=options["cluster-dns"] or "the daemon's own resolver",
        namespace=options["namespace"],
        mapped=options["mapped-namespace"] or "all",
    )
    return top


def _warn_overlaps(subnets: list[Network], domains: list[str]) -> None:
    for a in subnets:
        for b in subnets:
            if a is not b and a.version == b.version and a.subnet_of(b):  # type: ignore[arg-type]
                log.warn(
                    "--subnet {inner} lies inside --subnet {outer}", inner=str(a), outer=str(b)
                )
    for d in domains:
        if in_domains(d, [x for x in domains if x != d]):
            log.warn("--cluster-domain {domain} is inside another cluster domain", domain=d)
