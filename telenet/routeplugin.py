# -*- test-case-name: tests.test_routeplugin -*-
"""
``twistd teleroute``: the Docker network plug-in that routes containers through a daemon.

``docker network create -d teleroute -o host=H -o port=P NET`` ties the network to the
Telepresence (or telenet) daemon whose teleroute gRPC service listens on H:P. The plug-in
forwards each endpoint to the daemon: the daemon makes a veth pair, moves one end into our
network namespace (by our host pid), and Docker moves that end into the container as ``tpd-N``
with static routes to the daemon's routed subnets.

Behaviour and messages follow the Go plug-in (``cmd/teleroute``). Beyond it:

- when the daemon's Connect stream ends, the plug-in reconnects with back-off, and a new endpoint
  triggers an immediate attempt, so containers can join again once the daemon is back;
- networks and endpoints are saved in the state directory and restored at start, so a plug-in
  restarted after a crash still serves the networks Docker knows;
- Leave and DeleteEndpoint also succeed when the daemon no longer knows the endpoint (a daemon
  that restarted), so containers can always be detached.

This module is the twistd application (``Options``, ``makeService``); the plug-in itself lives
in ``telenet.netplugin``: ``driver`` (``NetworkDriver`` and its parts), ``link`` (the
connection to a daemon), ``options`` (Docker's requests and answers), ``records`` (what is
saved), ``sweep``, ``plumbing``, and ``rejoin`` with ``workloadns`` (workloads given their
interface back after a daemon restart).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service, strports
from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from telenet.core import dockerplugin
from telenet.core.logoptions import LogOptionsMixin
from telenet.core.reactor import IReactor, global_reactor
from telenet.core.threads import state_thread
from telenet.netplugin.driver import NetworkDriver
from telenet.netplugin.link import DaemonLink
from telenet.teleroute.interfaces import ClientFactory

log = Logger()


# -- the twistd tap


class Options(LogOptionsMixin, usage.Options):
    optParameters = [
        [
            "listen",
            "l",
            dockerplugin.plugin_endpoint("teleroute"),
            "Endpoint the plug-in API listens on.",
        ],
        [
            "state-dir",
            "s",
            "/var/lib/telenet/teleroute",
            "Directory for the saved networks and endpoints.",
        ],
    ]


class _DriverService(dockerplugin.DrainingService):
    """
    Reconnects restored networks once the reactor runs. At the end, once the requests in
    flight are answered (a Join waiting for a slow daemon gets the daemon's answer, not a
    cancelled call), it closes the daemon connections.
    """

    def __init__(
        self,
        driver: NetworkDriver,
        reactor: IReactorCore,
        site: dockerplugin.PluginSite | None = None,
        pool: ThreadPool | None = None,
    ) -> None:
        super().__init__(site, pool)
        self.driver = driver
        self.reactor = reactor

    def start_work(self) -> None:
        # grpc.aio needs the running loop: start after the reactor does.
        self.reactor.callWhenRunning(self.driver.start)

    def stop_work(self) -> defer.Deferred[Any]:
        return self.driver.stop()


def makeService(
    options: Options, reactor: IReactor | None = None, client_factory: ClientFactory | None = None
) -> service.MultiService:
    if reactor is None:
        # grpc.aio needs asyncio's loop; twistd has not imported a reactor yet, so
        # `twistd teleroute` works without --reactor (another one chosen is an error).
        from telenet.core.aio import install_asyncio_reactor

        install_asyncio_reactor()
        reactor = global_reactor()
    if client_factory is None:
        from telenet.teleroute.client import GrpcTelerouteClient

        client_factory = GrpcTelerouteClient
    from telenet.core.state import JSONFileStore

    state_dir = options["state-dir"]
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    dockerplugin.ensure_socket_dir(options["listen"])

    top = service.MultiService()
    pool, run_blocking = state_thread(reactor, "teleroute-state")

    from twisted.internet import threads

    from telenet.core.netlink import PyrouteNetlink
    from telenet.core.processes import spawner
    from telenet.netplugin.nsroutes import NetnsRoutes
    from telenet.netplugin.plumbing import NetnsPlumbing
    from telenet.netplugin.workloadns import NetnsWorkloads

    def off_reactor(f: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    driver = NetworkDriver(
        client_factory,
        JSONFileStore(os.path.join(state_dir, "state.json")),
        reactor,
        run_blocking,
        plumbing=NetnsPlumbing(spawner(reactor)),
        netlink=PyrouteNetlink(),
        routes=NetnsRoutes(spawner(reactor), off_reactor),
        # Its /proc scans are short: they share the state thread rather than the reactor.
        workloads=NetnsWorkloads(spawner(reactor), run_blocking),
    )
    driver.restore()
    log.info("teleroute plug-in, host pid {pid}", pid=driver._pid)
    from telenet.core.pluginadmin import LevelControl, admin_handlers

    admin = admin_handlers(reactor, lambda: health(driver), LevelControl(reactor))
    resource = dockerplugin.PluginResource(["NetworkDriver"], {**driver.handlers(), **admin})
    site = dockerplugin.plugin_site(resource)
    assert isinstance(site, dockerplugin.PluginSite)
    # Stopped together with the listener: it drains the site before closing anything.
    _DriverService(driver, reactor, site, pool).setServiceParent(top)
    strports.service(options["listen"], site, reactor=reactor).setServiceParent(top)
    return top


def _last_contact(driver: NetworkDriver, link: DaemonLink | None) -> float | None:
    if link is None:
        return None
    return driver._clock.seconds() if link.connected else link.lost_at


def health(driver: NetworkDriver) -> dict[str, Any]:
    """``/Telenet.Health``'s counters: each network's daemon link, and the endpoints."""
    networks = []
    for network_id, network in sorted(driver.networks.items()):
        link = network.link
        networks.append(
            {
                "Network": network_id[:12],
                "Daemon": f"{network.address.host}:{network.address.port}",
                "Connected": bool(link is not None and link.connected),
                # Connections made to the daemon; every one after the first is a reconnect.
                "Reconnects": max(0, link.connections - 1) if link is not None else 0,
                "Failures": link.failures if link is not None else 0,
                "LastError": link.last_error if link is not None else "not linked",
                # The daemon's last contact: now while linked (since ConnectedSince), else
                # when the link was lost (clock seconds, Unix time; None: never).
                "ConnectedSince": link.connected_at if link is not None else None,
                "LastContact": _last_contact(driver, link),
            }
        )
    return {"Networks": networks, "Endpoints": len(driver.endpoints)}
