"""
IWorkloadPlumbing's contract, asserted alike of ``MemoryWorkloads`` and of the real
``NetnsWorkloads`` (``/proc``, ``ip`` and ``nsenter``) between two scratch network namespaces:
the plug-in's (where new links start; every command runs there) and a workload's (a sleeping
process in it, its sandbox file under /run/netns, ``tpd-0`` holding its address).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from telenet.core.processes import spawner
from telenet.netplugin.interfaces import GONE, MISSING, PRESENT, IWorkloadPlumbing
from telenet.netplugin.plumbing import PlumbingError
from telenet.netplugin.workloadns import NetnsWorkloads
from telenet.testing.workloads import MemoryWorkloads
from tests.conftest import require
from tests.test_plumbing_contract import in_namespace, sh

NOWHERE = "/run/netns/tntest-gone"
ADDRESS = "10.250.7.2"
CIDR = f"{ADDRESS}/24"
ROUTES = [("10.99.0.0/16", "10.250.7.1"), ("10.98.0.0/16", "")]


class Setup:
    def __init__(
        self,
        plumbing: Any,
        make_link: Callable[[], str],
        sandbox: str,
        netns: str,
        lose: Callable[[], None],
        inside: Callable[[], tuple[dict[str, set[str]], set[tuple[str, str, str]]]],
    ) -> None:
        self.plumbing, self.make_link, self.sandbox, self.netns = (
            plumbing,
            make_link,
            sandbox,
            netns,
        )
        self.lose, self.inside = lose, inside


class Scratch:
    """The plug-in's and the workload's namespaces, and a process in the workload's."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.tag, self.ours, self.work = tag, f"tntest-{tag}", f"tntest-{tag}w"
        self.links = 0
        self.sleeper: subprocess.Popen[bytes] | None = None

    def make(self) -> str:
        sh("ip", "netns", "add", self.ours)
        sh("ip", "netns", "add", self.work)
        sh("ip", "-n", self.work, "link", "add", "tpd-0", "type", "veth", "peer", "name", "tpd-0p")
        sh("ip", "-n", self.work, "addr", "add", CIDR, "dev", "tpd-0")
        for link in ("tpd-0", "tpd-0p"):
            sh("ip", "-n", self.work, "link", "set", link, "up")
        self.sleeper = subprocess.Popen(["ip", "netns", "exec", self.work, "sleep", "600"])
        wanted = os.stat(f"/run/netns/{self.work}").st_ino
        for _ in range(250):
            if os.stat(f"/proc/{self.sleeper.pid}/ns/net").st_ino == wanted:
                return os.readlink(f"/proc/{self.sleeper.pid}/ns/net")
            subprocess.run(["sleep", "0.02"])
        raise AssertionError("the sleeper never entered the workload's namespace")

    def make_link(self) -> str:
        self.links += 1
        name = f"tnv{self.tag}{self.links}"
        sh("ip", "-n", self.ours, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        return name

    def lose(self) -> None:
        sh("ip", "-n", self.work, "link", "del", "tpd-0")

    def inside(self) -> tuple[dict[str, set[str]], set[tuple[str, str, str]]]:
        links: dict[str, set[str]] = {}
        for line in sh("ip", "-n", self.work, "-o", "-4", "addr", "show", "up").splitlines():
            fields = line.split()
            if fields[1].startswith("tpd-"):
                links.setdefault(fields[1], set()).add(fields[3])
        routes = set()
        for line in sh("ip", "-n", self.work, "-4", "route", "show").splitlines():
            fields = line.split()
            if "proto" in fields and "kernel" in fields:
                continue
            via = fields[fields.index("via") + 1] if "via" in fields else ""
            routes.add((fields[0], via, fields[fields.index("dev") + 1]))
        return links, routes

    def remove(self) -> None:
        if self.sleeper is not None:
            self.sleeper.kill()
            self.sleeper.wait()
        for namespace in (self.ours, self.work):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest_twisted.async_yield_fixture(params=["memory", pytest.param("netns", marks=pytest.mark.e2e)])
async def setup(request: Any) -> AsyncIterator[Setup]:
    if request.param == "memory":
        ours: list[str] = []
        memory = MemoryWorkloads(lambda: ours)
        workload = memory.add("/run/netns/tntest-work", {"tpd-0": [CIDR]})

        def fake_link() -> str:
            ours.append(f"tnv{len(ours) + 1}")
            return ours[-1]

        def fake_inside() -> tuple[dict[str, set[str]], set[tuple[str, str, str]]]:
            return {n: set(c) for n, c in workload.links.items()}, set(workload.routes)

        yield Setup(
            memory,
            fake_link,
            "/run/netns/tntest-work",
            workload.netns,
            workload.lose_interfaces,
            fake_inside,
        )
        return
    require(os.geteuid() == 0, "moving links between namespaces needs root")
    for tool in ("ip", "nsenter"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    from twisted.internet import reactor

    scratch = Scratch()
    try:
        netns = scratch.make()
        plumbing = NetnsWorkloads(in_namespace(spawner(reactor), scratch.ours))
        yield Setup(
            plumbing,
            scratch.make_link,
            f"/run/netns/{scratch.work}",
            netns,
            scratch.lose,
            scratch.inside,
        )
    finally:
        scratch.remove()


@pytest_twisted.ensureDeferred
async def test_provides_interface(setup: Setup) -> None:
    assert verifyObject(IWorkloadPlumbing, setup.plumbing)


@pytest_twisted.ensureDeferred
async def test_identify_by_address(setup: Setup) -> None:
    """The namespace holding the address, by its id, with the interface's name."""
    assert await setup.plumbing.identify([ADDRESS]) == (setup.netns, "tpd-0")
    assert await setup.plumbing.identify(["198.51.100.254"]) is None


@pytest_twisted.ensureDeferred
async def test_look(setup: Setup) -> None:
    """Present while the interface is there, missing once it is gone, gone if not visible."""
    assert await setup.plumbing.look(setup.sandbox, "", [ADDRESS]) == PRESENT
    assert await setup.plumbing.look(NOWHERE, setup.netns, [ADDRESS]) == PRESENT
    setup.lose()
    assert await setup.plumbing.look(setup.sandbox, "", [ADDRESS]) == MISSING
    assert await setup.plumbing.look(NOWHERE, setup.netns, [ADDRESS]) == MISSING
    assert await setup.plumbing.look(NOWHERE, "net:[1]", [ADDRESS]) == GONE
    assert await setup.plumbing.look(NOWHERE, "", [ADDRESS]) == GONE


@pytest_twisted.ensureDeferred
async def test_attach_gives_the_interface_back(setup: Setup) -> None:
    """The old name, the address, up, with the routes (via a next hop, or connected)."""
    setup.lose()
    link = setup.make_link()
    name = await setup.plumbing.attach(link, setup.sandbox, "", "tpd-0", [CIDR], ROUTES)
    assert name == "tpd-0"
    links, routes = setup.inside()
    assert links == {"tpd-0": {CIDR}}
    assert routes == {(d, via, "tpd-0") for d, via in ROUTES}
    assert await setup.plumbing.look(setup.sandbox, "", [ADDRESS]) == PRESENT


@pytest_twisted.ensureDeferred
async def test_attach_by_namespace_id(setup: Setup) -> None:
    """A sandbox not visible here (a managed plug-in): the saved namespace id finds it."""
    setup.lose()
    link = setup.make_link()
    assert await setup.plumbing.attach(link, NOWHERE, setup.netns, "tpd-0", [CIDR], []) == "tpd-0"
    assert setup.inside()[0] == {"tpd-0": {CIDR}}


@pytest_twisted.ensureDeferred
async def test_attach_name_taken_takes_the_next_free(setup: Setup) -> None:
    link = setup.make_link()
    name = await setup.plumbing.attach(link, setup.sandbox, "", "tpd-0", ["10.250.8.2/24"], [])
    assert name == "tpd-1"


@pytest_twisted.ensureDeferred
async def test_attach_nowhere(setup: Setup) -> None:
    link = setup.make_link()
    with pytest.raises(PlumbingError) as caught:
        await setup.plumbing.attach(link, NOWHERE, "net:[1]", "tpd-0", [CIDR], [])
    assert str(caught.value) == (
        f"the workload's network namespace (net:[1]; sandbox {NOWHERE}) is not visible here"
    )


@pytest_twisted.ensureDeferred
async def test_attach_missing_link(setup: Setup) -> None:
    with pytest.raises(PlumbingError, match=r"^ip link set dev tntest-nolink netns \d+ failed"):
        await setup.plumbing.attach("tntest-nolink", setup.sandbox, "", "tpd-0", [], [])
