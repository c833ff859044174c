"""
IEndpointPlumbing's contract, asserted alike of ``MemoryPlumbing`` and of the real
``NetnsPlumbing`` (real ``ip`` and ``nsenter``) between two scratch network namespaces: the
plug-in's (where the link starts; every command runs there) and the daemon container's (a
sleeping process in it, its sandbox file under /run/netns, an address of its own).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from telenet.core.processes import Processes, spawner
from telenet.netplugin.interfaces import IEndpointPlumbing
from telenet.netplugin.plumbing import NetnsPlumbing, PlumbingError
from telenet.testing.teleroute import MemoryPlumbing
from tests.conftest import require

NOWHERE = "/run/netns/tntest-gone"


class Setup:
    """The plumbing, a way to make links on our side, and the daemon's namespace."""

    def __init__(
        self,
        plumbing: Any,
        make_link: Callable[[], Awaitable[str]],
        sandbox: str,
        host: str,
        inside: Callable[[], dict[str, set[str]]],
    ) -> None:
        self.plumbing, self.make_link = plumbing, make_link
        self.sandbox, self.host, self.inside = sandbox, host, inside


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


def in_namespace(run: Processes, namespace: str) -> Processes:
    """Every command in ``namespace``: it is the plug-in's "our network namespace"."""
    return lambda argv: run(["ip", "netns", "exec", namespace, *argv])


class Namespaces:
    """The plug-in's and the daemon's scratch namespaces, and a process in the daemon's."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.ours, self.daemons = f"tntest-{tag}", f"tntest-{tag}d"
        self.tag = tag
        self.links = 0
        # A random TEST-NET-2 address: the lookup by address scans every namespace here.
        self.host = f"198.18.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
        self.sleeper: subprocess.Popen[bytes] | None = None

    def make(self) -> None:
        sh("ip", "netns", "add", self.ours)
        sh("ip", "netns", "add", self.daemons)
        # A veth pair (dummy links need a module that may not be loaded).
        sh("ip", "-n", self.daemons, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        sh("ip", "-n", self.daemons, "addr", "add", f"{self.host}/32", "dev", "eth0")
        for link in ("eth0", "eth0p"):
            sh("ip", "-n", self.daemons, "link", "set", link, "up")
        self.sleeper = subprocess.Popen(["ip", "netns", "exec", self.daemons, "sleep", "600"])
        wanted = os.stat(f"/run/netns/{self.daemons}").st_ino
        for _ in range(250):
            # `ip netns exec` execs sleep in the same process once it has entered.
            if os.stat(f"/proc/{self.sleeper.pid}/ns/net").st_ino == wanted:
                return
            subprocess.run(["sleep", "0.02"])
        raise AssertionError("the sleeper never entered the daemon's namespace")

    def make_link(self) -> str:
        self.links += 1
        name = f"tnv{self.tag}{self.links}"
        sh("ip", "-n", self.ours, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        return name

    def inside(self) -> dict[str, set[str]]:
        """The daemon's up ``tpd-*`` links and their global addresses."""
        found: dict[str, set[str]] = {}
        for line in sh("ip", "-n", self.daemons, "-o", "addr", "show", "up").splitlines():
            fields = line.split()
            if fields[1].startswith("tpd-") and "link" not in fields:
                found.setdefault(fields[1], set()).add(fields[3])
        return found

    def remove(self) -> None:
        if self.sleeper is not None:
            self.sleeper.kill()
            self.sleeper.wait()
        for namespace in (self.ours, self.daemons):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest_twisted.async_yield_fixture(params=["memory", pytest.param("netns", marks=pytest.mark.e2e)])
async def setup(request: Any) -> AsyncIterator[Setup]:
    if request.param == "memory":
        ours: list[str] = []
        memory = MemoryPlumbing(lambda: ours)
        namespace = memory.add_namespace("/run/netns/tntest-daemon", 4242, "198.18.0.1")

        async def fake_link() -> str:
            ours.append(f"tnv{len(ours) + 1}")
            return ours[-1]

        def fake_inside() -> dict[str, set[str]]:
            return {name: cidrs(*addresses) for name, addresses in namespace.links.items()}

        yield Setup(memory, fake_link, "/run/netns/tntest-daemon", "198.18.0.1", fake_inside)
        return
    require(os.geteuid() == 0, "moving links between namespaces needs root")
    for tool in ("ip", "nsenter"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    from twisted.internet import reactor

    spaces = Namespaces()
    try:
        spaces.make()
        plumbing = NetnsPlumbing(in_namespace(spawner(reactor), spaces.ours))

        async def real_link() -> str:
            return spaces.make_link()

        sandbox = f"/run/netns/{spaces.daemons}"
        yield Setup(plumbing, real_link, sandbox, spaces.host, spaces.inside)
    finally:
        spaces.remove()


def cidrs(*texts: str) -> set[str]:
    return {str(ipaddress.ip_interface(t)) for t in texts}


@pytest_twisted.ensureDeferred
async def test_provides_interface(setup: Setup) -> None:
    """Both implementations provide IEndpointPlumbing."""
    assert verifyObject(IEndpointPlumbing, setup.plumbing)


@pytest_twisted.ensureDeferred
async def test_adopt_by_sandbox(setup: Setup) -> None:
    """The link lands in the sandbox's namespace as tpd-0, addressed and up."""
    link = await setup.make_link()
    addresses = ["10.250.0.2/24", "fd00:250::2/64"]
    assert await setup.plumbing.adopt(link, setup.sandbox, setup.host, addresses) == "tpd-0"
    assert setup.inside() == {"tpd-0": cidrs(*addresses)}


@pytest_twisted.ensureDeferred
async def test_adopt_by_daemon_address(setup: Setup) -> None:
    """A sandbox not visible here: the namespace holding the daemon's address is used."""
    link = await setup.make_link()
    assert await setup.plumbing.adopt(link, NOWHERE, setup.host, ["10.250.0.3/24"]) == "tpd-0"
    assert setup.inside()["tpd-0"] == cidrs("10.250.0.3/24")


@pytest_twisted.ensureDeferred
async def test_next_free_name(setup: Setup) -> None:
    """Each adopted link takes the next tpd-N free in that namespace."""
    names = [
        await setup.plumbing.adopt(await setup.make_link(), setup.sandbox, setup.host, [])
        for _ in range(3)
    ]
    assert names == ["tpd-0", "tpd-1", "tpd-2"]


@pytest_twisted.ensureDeferred
async def test_no_namespace(setup: Setup) -> None:
    """Neither the sandbox nor the daemon's address found: PlumbingError saying so."""
    link = await setup.make_link()
    with pytest.raises(PlumbingError) as caught:
        await setup.plumbing.adopt(link, NOWHERE, "198.51.100.254", [])
    assert str(caught.value) == (
        "no network namespace holds the daemon's address 198.51.100.254 "
        f"(and the sandbox {NOWHERE} is not visible here)"
    )


@pytest_twisted.ensureDeferred
async def test_missing_link(setup: Setup) -> None:
    """A link that is not on our side: PlumbingError naming the command that failed."""
    with pytest.raises(PlumbingError, match=r"^ip link set dev tntest-nolink netns \d+ failed"):
        await setup.plumbing.adopt("tntest-nolink", setup.sandbox, setup.host, [])
