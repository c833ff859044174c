"""
Live routes, the plug-in's side (``telenet.netplugin.liveroutes``): the driver against
``MemoryTeleroute`` (the daemon's real core) and ``MemoryContainerRoutes`` (the containers'
routing tables), with ``task.Clock``.
"""

from __future__ import annotations

import ipaddress

from twisted.logger import LogLevel, capturedLogs

from telenet.netplugin.driver import NetworkDriver
from telenet.netplugin.interfaces import ContainerRoute
from telenet.netplugin.liveroutes import JOIN_GRACE, RETRIES, RETRY_DELAY, WATCH_RETRY
from telenet.testing.nsroutes import MemoryContainerRoutes, MemoryRouteNamespace
from telenet.testing.teleroute import MemoryTeleroute
from tests.test_routeplugin import (
    NET,
    PID,
    WORK_EP,
    Harness,
    endpoint_body,
)

SANDBOX = "/var/run/docker/netns/0123456789ab"
DAEMON_ADDRESS = "172.21.0.2"
WORK_ADDRESS = "172.21.0.3"
ROUTED = "10.123.0.0/16"
NEW = "10.200.0.0/16"


class LiveHarness(Harness):
    """The plug-in with live routes, its daemon, and the workload's namespace."""

    def __init__(self, daemon: MemoryTeleroute | None = None, visible: bool = True) -> None:
        super().__init__(daemon=daemon or MemoryTeleroute(routes=[ROUTED]))
        from treq.testing import StubTreq

        from telenet.core.dockerplugin import PluginResource

        self.routes = MemoryContainerRoutes()
        self.driver.stop()
        self.driver = NetworkDriver(
            self.daemon.client,
            self.store,
            self.clock,
            self.saves,
            pid=PID,
            plumbing=self.plumbing,
            netlink=self.netlink,
            routes=self.routes,
        )
        self.driver.start()
        self.stub = StubTreq(PluginResource(["NetworkDriver"], self.driver.handlers()))
        self.visible = visible

    def workload(
        self, endpoint: str = WORK_EP, address: str = WORK_ADDRESS, *others: str
    ) -> MemoryRouteNamespace:
        """A workload joins: its namespace, with the routes Docker installs from the Join."""
        sandbox = f"{SANDBOX}{endpoint[:2]}"
        space = self.routes.add_namespace(
            sandbox, 5000 + len(self.routes.spaces), f"{address}/16", *others, visible=self.visible
        )
        self.ok("/NetworkDriver.CreateEndpoint", endpoint_body(endpoint, f"{address}/16"))
        answer = self.ok(
            "/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": endpoint, "SandboxKey": sandbox}
        )
        for route in answer["StaticRoutes"]:
            space.routes.append(
                ContainerRoute(
                    ipaddress.ip_network(route["Destination"]), route["NextHop"], "tpd-0"
                )
            )
        return space

    def settle(self) -> None:
        """Past the Join grace, and the updates made."""
        self.clock.advance(JOIN_GRACE)
        self.clock.advance(0)


def ready(daemon: MemoryTeleroute | None = None, visible: bool = True) -> LiveHarness:
    h = LiveHarness(daemon, visible)
    h.network()
    h.daemon_joins()
    return h


def table(space: MemoryRouteNamespace) -> dict[str, str]:
    return space.table()


# -- following the daemon


def test_a_route_added_and_removed_reaches_a_running_container() -> None:
    """A new subnet is routed via the daemon; a removed one goes; the others are untouched."""
    h = ready()
    space = h.workload()
    h.settle()
    assert table(space) == {"172.21.0.0/16": "", ROUTED: DAEMON_ADDRESS}
    assert h.routes.changes == []  # the Join's routes were already there
    h.daemon.set_routes([ROUTED, NEW])
    h.clock.advance(0)
    assert table(space)[NEW] == DAEMON_ADDRESS
    assert h.routes.changes == [("replace", space.sandbox_key, NEW, DAEMON_ADDRESS)]
    h.daemon.set_routes([NEW])
    h.clock.advance(0)
    assert table(space) == {"172.21.0.0/16": "", NEW: DAEMON_ADDRESS}
    assert h.routes.changes[-1] == ("delete", space.sandbox_key, ROUTED, DAEMON_ADDRESS)
    assert len(h.routes.changes) == 2


def test_every_joined_workload_gets_the_change() -> None:
    h = ready()
    first = h.workload(WORK_EP, WORK_ADDRESS)
    second = h.workload("b" * 64, "172.21.0.4")
    h.settle()
    h.daemon.set_routes([ROUTED, NEW])
    h.clock.advance(0)
    assert table(first)[NEW] == table(second)[NEW] == DAEMON_ADDRESS


def test_the_daemons_own_endpoint_is_left_alone() -> None:
    h = ready()
    h.settle()
    h.daemon.set_routes([ROUTED, NEW])
    h.clock.advance(0)
    assert h.routes.changes == []


def test_a_container_is_left_alone_right_after_its_join() -> None:
    """Docker installs the Join's routes after our answer: a change waits for the grace."""
    h = ready()
    space = h.workload()
    h.daemon.set_routes([ROUTED, NEW])
    h.clock.advance(0)
    assert h.routes.changes == []
    h.clock.advance(JOIN_GRACE)
    assert table(space)[NEW] == DAEMON_ADDRESS


def test_found_by_address_when_the_sandbox_is_not_visible() -> None:
    """A managed plug-in does not see Docker's netns files: /proc by the endpoint's address."""
    h = ready(visible=False)
    space = h.workload()
    h.settle()
    h.daemon.set_routes([ROUTED, NEW])
    h.clock.advance(0)
    assert h.routes.changes == [("replace", space.proc_path, NEW, DAEMON_ADDRESS)]


def test_routes_that_would_shadow_the_containers_networks_are_refused_and_logged() -> None:
    h = ready()
    space = h.workload(WORK_EP, WORK_ADDRESS, "10.200.5.2/24")
    h.settle()
    with capturedLogs() as events:
        h.daemon.set_routes([ROUTED, NEW, "10.201.0.0/16"])
        h.clock.advance(0)
        h.daemon.set_routes([ROUTED, NEW, "10.202.0.0/16"])
        h.clock.advance(0)
    assert NEW not in table(space)
    assert table(space)["10.202.0.0/16"] == DAEMON_ADDRESS
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1, warnings  # said once
    (warning,) = warnings
    assert (warning["subnet"], warning["own"], warning["id"]) == (
        NEW,
        "10.200.5.0/24",
        WORK_EP[:12],
    )


def test_a_failed_change_is_retried() -> None:
    h = ready()
    space = h.workload()
    h.settle()
    h.routes.fail = "nsenter: Operation not permitted"
    h.daemon.set_routes([ROUTED, NEW])
    h.clock.advance(0)
    h.clock.advance(RETRY_DELAY)
    h.routes.fail = None
    h.clock.advance(RETRY_DELAY)
    assert table(space)[NEW] == DAEMON_ADDRESS


def test_giving_up_is_logged() -> None:
    h = ready()
    h.workload()
    h.settle()
    h.routes.fail = "nsenter: Operation not permitted"
    with capturedLogs() as events:
        h.daemon.set_routes([ROUTED, NEW])
        h.clock.advance(0)
        for _ in range(RETRIES):
            h.clock.advance(RETRY_DELAY)
    texts = [e["log_format"] for e in events if e["log_level"] == LogLevel.warn]
    assert any("cannot bring the routes" in t for t in texts), texts
    assert not h.clock.getDelayedCalls()


def test_a_container_that_left_is_forgotten() -> None:
    h = ready()
    space = h.workload()
    h.settle()
    h.ok("/NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": WORK_EP})
    h.ok("/NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": WORK_EP})
    h.routes.remove_namespace(space)
    h.daemon.set_routes([ROUTED, NEW])
    h.clock.advance(0)
    assert h.routes.changes == []


# -- the stream's life


def test_a_restarted_daemon_is_watched_again_and_containers_converge() -> None:
    h = ready()
    space = h.workload()
    h.settle()
    h.daemon.routes = [NEW]
    h.daemon.restart()
    # The new daemon knows nothing: the plug-in reconnects (back-off) and watches again.
    h.clock.advance(0.1)
    assert len(h.daemon.route_watches) == 2
    h.daemon_joins()
    h.clock.advance(0)
    assert table(space) == {"172.21.0.0/16": "", NEW: DAEMON_ADDRESS}


def test_a_watch_that_ends_alone_is_reopened() -> None:
    h = ready()
    (watch,) = h.daemon.route_watches
    watch.end("broke")
    h.clock.advance(WATCH_RETRY)
    assert len(h.daemon.open_sessions) == 1
    assert [w.is_open for w in h.daemon.route_watches] == [False, True]


def test_a_daemon_without_live_routes_is_said_once_and_nothing_breaks() -> None:
    """Go's daemon answers UNIMPLEMENTED: logged once, the network and its Joins work."""
    with capturedLogs() as events:
        h = ready(MemoryTeleroute(routes=[ROUTED], live_routes=False))
        space = h.workload()
        h.settle()
        h.daemon.restart()
        h.clock.advance(0.1)
        h.daemon_joins()
    said = [e for e in events if "no live routes" in e["log_format"]]
    assert len(said) == 1 and said[0]["log_level"] == LogLevel.info
    assert table(space)[ROUTED] == DAEMON_ADDRESS
    assert h.daemon.route_watches == []
    assert ("WatchRoutes", "172.17.0.2:4039") in h.daemon.calls


def test_without_container_routes_the_daemon_is_not_asked() -> None:
    h = Harness()
    h.network()
    assert all(method != "WatchRoutes" for method, _ in h.daemon.calls)


def test_stopping_the_driver_ends_the_watch() -> None:
    h = ready()
    h.workload()
    h.daemon.set_routes([ROUTED, NEW])
    h.driver.stop()
    assert not any(w.is_open for w in h.daemon.route_watches)
    assert h.daemon.core.feed.subscribers == 0
    assert not h.clock.getDelayedCalls()


def test_a_deleted_network_stops_following() -> None:
    h = ready()
    h.workload()
    h.settle()
    h.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    h.daemon.set_routes([ROUTED, NEW])
    h.clock.advance(0)
    assert h.routes.changes == []
    assert h.daemon.core.feed.subscribers == 0

    assert NET not in h.driver._live


def test_each_family_via_its_own_next_hop() -> None:
    """IPv6 subnets go via the daemon's IPv6 address; a family without a next hop is skipped."""
    h = LiveHarness()
    h.network(v6="fd00:21::1/64")
    h.daemon_joins(ipv6="fd00:21::2/64")
    space = h.routes.add_namespace(
        f"{SANDBOX}v6", 6000, f"{WORK_ADDRESS}/16", "fd00:21::3/64", visible=True
    )
    h.ok(
        "/NetworkDriver.CreateEndpoint",
        endpoint_body(WORK_EP, f"{WORK_ADDRESS}/16", "fd00:21::3/64"),
    )
    h.ok(
        "/NetworkDriver.Join",
        {"NetworkID": NET, "EndpointID": WORK_EP, "SandboxKey": f"{SANDBOX}v6"},
    )
    h.settle()
    h.daemon.set_routes([ROUTED, "fd00:96::/108"])
    h.clock.advance(0)
    assert table(space)["fd00:96::/108"] == "fd00:21::2"
    assert table(space)[ROUTED] == DAEMON_ADDRESS


def test_a_family_without_a_next_hop_is_not_routed() -> None:
    h = ready()
    space = h.workload()
    h.settle()
    h.daemon.set_routes([ROUTED, "fd00:96::/108"])
    h.clock.advance(0)
    assert "fd00:96::/108" not in table(space)


def test_a_reconnection_brings_containers_back_to_the_set() -> None:
    """A new stream's first update is applied even when the set is the same (a route lost)."""
    h = ready()
    space = h.workload()
    h.settle()
    space.routes = [r for r in space.routes if str(r.destination) != ROUTED]
    (watch,) = h.daemon.route_watches
    watch.end("broke")
    h.clock.advance(WATCH_RETRY)
    h.clock.advance(0)
    assert table(space)[ROUTED] == DAEMON_ADDRESS
