"""
Workloads that outlive a daemon restart (telenet.netplugin.rejoin), with the memory daemon
(which stops and boots afresh as a restarted container does), ``MemoryWorkloads`` and
``task.Clock``.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from treq.testing import StubTreq
from twisted.internet import task

from telenet.core.dockerplugin import PluginResource
from telenet.netplugin.driver import NetworkDriver
from telenet.netplugin.rejoin import IDENTIFY_DELAYS
from telenet.teleroute.interfaces import TelerouteError
from telenet.testing import MemoryNetlink, MemoryStateStore
from telenet.testing.teleroute import MemoryPlumbing, MemoryTeleroute
from telenet.testing.workloads import MemoryWorkload, MemoryWorkloads

from .helpers import result_of
from .test_routeplugin import (
    D2,
    DAEMON_EP,
    DAEMON_HOST,
    PID,
    SANDBOX,
    WORK_EP,
    create_network_body,
    daemon_container_restarts,
    endpoint_body,
    ids,
)

WORK_SANDBOX = "/var/run/docker/netns/feedfacecafe"
ROUTE = "10.123.0.0/16"


class Harness:
    """The driver with workload plumbing; ``workloads`` outlive a plug-in restart."""

    def __init__(
        self,
        store: MemoryStateStore | None = None,
        daemon: MemoryTeleroute | None = None,
        workloads: MemoryWorkloads | None = None,
        netlink: MemoryNetlink | None = None,
    ) -> None:
        self.clock = task.Clock()
        self.store = store or MemoryStateStore()
        self.daemon = daemon or MemoryTeleroute(routes=[ROUTE])

        def ours() -> list[str]:
            return [name for name, pid in self.daemon.netlink.moved.items() if pid == PID]

        self.plumbing = MemoryPlumbing(ours)
        self.plumbing.add_namespace(SANDBOX, 4321, DAEMON_HOST)
        self.workloads = workloads or MemoryWorkloads(ours)
        self.netlink = netlink or MemoryNetlink()
        self.driver = NetworkDriver(
            self.daemon.client,
            self.store,
            self.clock,
            pid=PID,
            plumbing=self.plumbing,
            netlink=self.netlink,
            workloads=self.workloads,
        )
        self.driver.restore()
        self.driver.start()
        self.stub = StubTreq(PluginResource(["NetworkDriver"], self.driver.handlers()))

    def ok(self, path: str, body: dict[str, Any]) -> Any:
        d = self.stub.post("http://p" + path, data=json.dumps(body))
        d.addCallback(lambda r: r.content().addCallback(lambda c: (r.code, json.loads(c))))
        for _ in range(200):
            self.stub.flush()
            if d.called:
                break
            self.clock.advance(0.05)
        code, answer = result_of(d)
        assert code == 200, answer
        return answer

    def network(self) -> None:
        self.ok("/NetworkDriver.CreateNetwork", create_network_body())

    def daemon_joins(self) -> None:
        self.ok(
            "/NetworkDriver.CreateEndpoint",
            endpoint_body(DAEMON_EP, "172.21.0.2/16", options={"daemon": "true"}),
        )
        self.ok("/NetworkDriver.Join", ids(DAEMON_EP))

    def workload_runs(
        self, endpoint: str = WORK_EP, address: str = "172.21.0.3/16", sandbox: str = WORK_SANDBOX
    ) -> MemoryWorkload:
        """Docker creates and joins a workload's endpoint, and moves the interface in as tpd-0."""
        self.ok("/NetworkDriver.CreateEndpoint", endpoint_body(endpoint, address))
        self.ok("/NetworkDriver.Join", {**ids(endpoint), "SandboxKey": sandbox})
        workload = self.workloads.add(sandbox, {"tpd-0": [address]})
        # Docker moved the veth end away from the plug-in's side.
        self.daemon.netlink.moved.pop(self.daemon.core.endpoints[endpoint].pair.peer)
        self.clock.advance(IDENTIFY_DELAYS[0])
        return workload

    def daemon_restarts(self, *workloads: MemoryWorkload) -> None:
        """docker restart of the daemon container: every workload's interface goes with it."""
        daemon_container_restarts(self)  # type: ignore[arg-type]
        for workload in workloads:
            workload.lose_interfaces()

    def back(self, seconds: float = 2.0) -> None:
        """The daemon is ready; time passes."""
        self.daemon.start()
        self.clock.advance(seconds)

    def wait(self, seconds: float, step: float = 0.1) -> None:
        """Time passes in small steps (each delayed call runs when it is due)."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def calls(self, method: str) -> int:
        return sum(1 for m, _ in self.daemon.calls if m == method)


def started() -> tuple[Harness, MemoryWorkload]:
    h = Harness()
    h.network()
    h.daemon_joins()
    return h, h.workload_runs()


def test_a_running_workload_is_identified_and_saved() -> None:
    """A moment after Docker's Join, the workload's namespace and interface name are saved."""
    h, workload = started()
    saved = h.store.load()["endpoints"][WORK_EP]
    assert (saved["netns"], saved["name"], saved["rejoined"]) == (workload.netns, "tpd-0", False)


def test_identified_once_its_process_runs() -> None:
    """The namespace is looked for again, further apart, until the workload holds its address."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    h.ok("/NetworkDriver.Join", {**ids(WORK_EP), "SandboxKey": WORK_SANDBOX})
    h.clock.advance(sum(IDENTIFY_DELAYS[:3]))
    assert h.driver.endpoints[WORK_EP].netns == ""
    workload = h.workloads.add(WORK_SANDBOX, {"tpd-0": ["172.21.0.3/16"]})
    h.clock.advance(IDENTIFY_DELAYS[3])
    assert h.driver.endpoints[WORK_EP].netns == workload.netns


def test_workload_gets_its_interface_back_after_a_daemon_restart() -> None:
    """
    The daemon's own endpoint first, then the workload: re-created on the new daemon, its new
    veth end in the workload's namespace as tpd-0 with its address and routes via the
    restarted daemon's new address.
    """
    h, workload = started()
    h.daemon_restarts(workload)
    assert workload.links == {}
    h.back()
    assert str(h.daemon.core.daemon_ipv4) == "172.21.0.4"
    assert WORK_EP in h.daemon.core.endpoints
    assert workload.links == {"tpd-0": ["172.21.0.3/16"]}
    assert workload.routes == [(ROUTE, "172.21.0.4", "tpd-0")]
    ((link, netns, _, _),) = h.workloads.attached
    assert (link, netns) == (h.daemon.core.endpoints[WORK_EP].pair.peer, workload.netns)
    assert h.store.load()["endpoints"][WORK_EP]["rejoined"] is True
    # The daemon endpoint was set up before the workload's CreateEndpoint went out.
    order = [m for m, _ in h.daemon.calls if m in ("CreateEndpoint", "Join")]
    assert order[:4] == ["CreateEndpoint", "Join", "CreateEndpoint", "Join"]


def test_a_workload_by_its_namespace_id_when_the_sandbox_is_hidden() -> None:
    """A managed plug-in cannot see Docker's sandbox files: the saved namespace id finds it."""
    h, workload = started()
    workload.visible = False
    h.daemon_restarts(workload)
    h.back()
    assert workload.links == {"tpd-0": ["172.21.0.3/16"]}


def test_a_reconnection_to_the_same_daemon_changes_nothing() -> None:
    """The plug-in restarted, the daemon did not: interfaces are there, nothing is re-created."""
    h, workload = started()
    again = Harness(store=h.store, daemon=h.daemon, workloads=h.workloads)
    again.clock.advance(2)
    assert h.daemon.open_sessions and h.workloads.attached == []
    assert again.calls("CreateEndpoint") == 2  # the two Docker made, before the restart


def test_workload_removed_during_the_outage_is_not_recreated() -> None:
    h, workload = started()
    h.daemon_restarts(workload)
    h.ok("/NetworkDriver.Leave", ids(WORK_EP))
    h.ok("/NetworkDriver.DeleteEndpoint", ids(WORK_EP))
    h.workloads.remove(workload)
    h.back()
    assert WORK_EP not in h.daemon.core.endpoints and h.workloads.attached == []


def test_workload_whose_namespace_is_gone_is_left_to_docker() -> None:
    """A workload that stopped: nothing is asked of the daemon for it; Docker will delete it."""
    h, workload = started()
    h.daemon_restarts(workload)
    h.workloads.remove(workload)
    before = h.calls("CreateEndpoint")
    h.back()
    assert WORK_EP not in h.daemon.core.endpoints
    assert h.calls("CreateEndpoint") == before + 1  # the daemon's own only
    assert WORK_EP in h.driver.endpoints and h.workloads.attached == []


def test_the_daemon_coming_back_twice() -> None:
    h, workload = started()
    h.daemon_restarts(workload)
    h.back()
    first = h.daemon.core.endpoints[WORK_EP].pair.peer
    # Again: Docker replaces the daemon's endpoint once more, while the daemon is away.
    h.daemon.stop()
    workload.lose_interfaces()
    h.ok("/NetworkDriver.Leave", ids(D2))
    h.ok("/NetworkDriver.DeleteEndpoint", ids(D2))
    d3 = "d3" * 32
    h.ok(
        "/NetworkDriver.CreateEndpoint",
        endpoint_body(d3, "172.21.0.6/16", options={"daemon": "true"}),
    )
    h.ok("/NetworkDriver.Join", {**ids(d3), "SandboxKey": SANDBOX})
    h.back()
    second = h.daemon.core.endpoints[WORK_EP].pair.peer
    assert [a[0] for a in h.workloads.attached] == [first, second]
    assert workload.links == {"tpd-0": ["172.21.0.3/16"]}
    assert workload.routes == [(ROUTE, "172.21.0.6", "tpd-0")]


def test_two_workloads_one_stopped() -> None:
    h, one = started()
    two = h.workload_runs("w2" * 32, "172.21.0.5/16", "/var/run/docker/netns/two")
    h.daemon_restarts(one, two)
    h.workloads.remove(one)
    h.back()
    assert two.links == {"tpd-0": ["172.21.0.5/16"]}
    assert WORK_EP not in h.daemon.core.endpoints


def test_plugin_crash_while_the_daemon_was_away() -> None:
    """A new plug-in process on the saved state gives the workload its interface back."""
    h, workload = started()
    h.daemon_restarts(workload)
    again = Harness(store=h.store, daemon=h.daemon, workloads=h.workloads)
    again.back()
    assert workload.links == {"tpd-0": ["172.21.0.3/16"]}


def test_plugin_crash_after_recreating_before_attaching() -> None:
    """
    The daemon has the endpoint but the interface never reached the workload: the next
    process makes the daemon replace the pair and attaches the new one.
    """
    h, workload = started()
    h.daemon_restarts(workload)
    h.workloads.fail = "nsenter: Operation not permitted"
    h.back()
    assert WORK_EP in h.daemon.core.endpoints and workload.links == {}
    h.workloads.fail = None
    again = Harness(store=h.store, daemon=h.daemon, workloads=h.workloads)
    again.clock.advance(2)
    assert workload.links == {"tpd-0": ["172.21.0.3/16"]}
    assert again.calls("RemoveEndpoint") == 1


def test_a_daemon_refusing_the_endpoint_is_tried_at_the_next_connection() -> None:
    h, workload = started()
    h.daemon_restarts(workload)
    h.daemon.errors["Join"] = TelerouteError(grpc.StatusCode.INTERNAL, "the daemon is broken")
    h.back()
    assert workload.links == {}
    del h.daemon.errors["Join"]
    h.daemon.restart()
    h.clock.advance(2)
    assert workload.links == {"tpd-0": ["172.21.0.3/16"]}


def test_daemon_container_replaced_its_endpoint_after_the_daemon_started() -> None:
    """
    A new daemon container (an upgrade: removed, run, then connected to the network) is up
    before its endpoint exists: the workload's Join is refused (no next hop yet), and tried
    again, further apart, until the daemon's endpoint is there.
    """
    h, workload = started()
    h.daemon.stop()
    workload.lose_interfaces()
    h.ok("/NetworkDriver.Leave", ids(DAEMON_EP))
    h.ok("/NetworkDriver.DeleteEndpoint", ids(DAEMON_EP))
    before = h.calls("Join")
    h.daemon.start()
    # The memory daemon names veths from a counter that starts again at each boot: move it on,
    # so that the new daemon's names are not the old one's (random names never are).
    for _ in range(16):
        h.daemon.core.random_bytes(6)
    h.wait(5)
    assert workload.links == {} and WORK_EP in h.daemon.core.endpoints
    assert h.calls("Join") - before == 3  # at once, then 1 s and 2 s later
    h.ok(
        "/NetworkDriver.CreateEndpoint",
        endpoint_body(D2, "172.21.0.4/16", options={"daemon": "true"}),
    )
    h.ok("/NetworkDriver.Join", {**ids(D2), "SandboxKey": SANDBOX})
    h.wait(8)
    assert workload.links == {"tpd-0": ["172.21.0.3/16"]}
    assert workload.routes == [(ROUTE, "172.21.0.4", "tpd-0")]
    joins = h.calls("Join")
    h.wait(120, step=1)
    assert h.calls("Join") == joins  # nothing more once it worked


def test_docker_taking_back_a_rejoined_interface_frees_the_daemons_pair() -> None:
    """
    Docker renames the interface at Leave to the veth end its own Join handed over; that is
    not the new pair's name, so DeleteEndpoint deletes it and the daemon makes a new pair for
    the next container with that address.
    """
    h, workload = started()
    old_name = h.driver.endpoints[WORK_EP].interface
    h.daemon_restarts(workload)
    h.back()
    # Leave: Docker moves tpd-0 back into the plug-in's namespace under its old name.
    result_of(
        h.netlink.create_veth(old_name, "02:00:00:00:00:01", old_name + "p", "02:00:00:00:00:02")
    )
    h.ok("/NetworkDriver.Leave", ids(WORK_EP))
    h.ok("/NetworkDriver.DeleteEndpoint", ids(WORK_EP))
    assert result_of(h.netlink.get_link(old_name)) is None
    # DeleteEndpoint of a workload Docker joined itself leaves the plug-in's links alone.
    w2 = "w2" * 32
    h.workload_runs(w2, "172.21.0.5/16", "/var/run/docker/netns/two")
    kept = h.driver.endpoints[w2].interface
    result_of(h.netlink.create_veth(kept, "02:00:00:00:00:03", kept + "p", "02:00:00:00:00:04"))
    h.ok("/NetworkDriver.Leave", ids(w2))
    h.ok("/NetworkDriver.DeleteEndpoint", ids(w2))
    assert result_of(h.netlink.get_link(kept)) is not None


def test_a_rejoined_endpoint_docker_let_go_unheard_frees_the_pair_too() -> None:
    """Forgotten by the reconciliation (Docker gave its address away): the link goes too."""
    h, workload = started()
    old_name = h.driver.endpoints[WORK_EP].interface
    h.daemon_restarts(workload)
    h.back()
    result_of(
        h.netlink.create_veth(old_name, "02:00:00:00:00:01", old_name + "p", "02:00:00:00:00:02")
    )
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body("w9" * 32, "172.21.0.3/16"))
    assert WORK_EP not in h.driver.endpoints
    assert result_of(h.netlink.get_link(old_name)) is None


def test_without_workload_plumbing_nothing_happens() -> None:
    """The driver built without it (older callers) behaves as before."""
    h = Harness()
    h.driver._workloads = None
    h.network()
    h.daemon_joins()
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    h.ok("/NetworkDriver.Join", {**ids(WORK_EP), "SandboxKey": WORK_SANDBOX})
    daemon_container_restarts(h)  # type: ignore[arg-type]
    h.back()
    assert WORK_EP not in h.daemon.core.endpoints
    assert D2 in h.driver.endpoints
