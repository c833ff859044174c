"""
IContainerRoutes' contract, asserted alike of ``MemoryContainerRoutes`` and of the real
``NetnsRoutes`` (``nsenter`` and ``ip``) in a scratch network namespace standing for a
container: a veth pair with an address, a sleeping process in it, its file under /run/netns.
No dockerd.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from telenet.netplugin.interfaces import IContainerRoutes
from telenet.netplugin.nsroutes import NetnsRoutes, parse_routes
from telenet.netplugin.plumbing import PlumbingError
from telenet.testing.nsroutes import MemoryContainerRoutes
from tests.conftest import require

NOWHERE = "/run/netns/tntest-gone"


class Setup:
    def __init__(self, routes: Any, sandbox: str, address: str, prefix: str) -> None:
        self.routes, self.sandbox, self.address, self.prefix = routes, sandbox, address, prefix

    def hop(self, n: int) -> str:
        """An address on the container's own network."""
        return f"{self.prefix}.{n}"


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


class Namespace:
    def __init__(self) -> None:
        self.name = f"tntest-{uuid.uuid4().hex[:8]}r"
        self.prefix = f"10.{random.randrange(200, 250)}.{random.randrange(1, 255)}"
        self.address = f"{self.prefix}.2"
        self.sleeper: subprocess.Popen[bytes] | None = None

    def make(self) -> None:
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        sh("ip", "-n", self.name, "addr", "add", f"{self.address}/24", "dev", "eth0")
        for link in ("lo", "eth0", "eth0p"):
            sh("ip", "-n", self.name, "link", "set", link, "up")
        self.sleeper = subprocess.Popen(["ip", "netns", "exec", self.name, "sleep", "600"])
        wanted = os.stat(f"/run/netns/{self.name}").st_ino
        for _ in range(250):
            if os.stat(f"/proc/{self.sleeper.pid}/ns/net").st_ino == wanted:
                return
            subprocess.run(["sleep", "0.02"])
        raise AssertionError("the sleeper never entered the namespace")

    def remove(self) -> None:
        if self.sleeper is not None:
            self.sleeper.kill()
            self.sleeper.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest_twisted.async_yield_fixture(params=["memory", pytest.param("netns", marks=pytest.mark.e2e)])
async def setup(request: Any) -> AsyncIterator[Setup]:
    if request.param == "memory":
        memory = MemoryContainerRoutes()
        memory.add_namespace("/run/netns/tntest-container", 4242, "10.250.7.2/24")
        yield Setup(memory, "/run/netns/tntest-container", "10.250.7.2", "10.250.7")
        return
    require(os.geteuid() == 0, "entering a network namespace needs root")
    for tool in ("ip", "nsenter"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    from twisted.internet import reactor

    from telenet.core.processes import spawner

    space = Namespace()
    try:
        space.make()
        yield Setup(
            NetnsRoutes(spawner(reactor)), f"/run/netns/{space.name}", space.address, space.prefix
        )
    finally:
        space.remove()


def gateways(routes: list[Any]) -> dict[str, str]:
    return {str(r.destination): r.gateway for r in routes if not r.connected}


@pytest_twisted.ensureDeferred
async def test_provides_interface(setup: Setup) -> None:
    assert verifyObject(IContainerRoutes, setup.routes)


@pytest_twisted.ensureDeferred
async def test_namespace_by_sandbox_and_by_address(setup: Setup) -> None:
    """The sandbox file when visible; else a process's namespace holding the address."""
    assert await setup.routes.namespace(setup.sandbox, []) == setup.sandbox
    by_address = await setup.routes.namespace(NOWHERE, ["198.51.100.254", setup.address])
    assert by_address.startswith("/proc/") and by_address.endswith("/ns/net")
    assert await setup.routes.routes(by_address) == await setup.routes.routes(setup.sandbox)


@pytest_twisted.ensureDeferred
async def test_no_namespace(setup: Setup) -> None:
    with pytest.raises(PlumbingError) as caught:
        await setup.routes.namespace(NOWHERE, ["198.51.100.254"])
    assert str(caught.value) == (
        f"no network namespace holds 198.51.100.254 (and the sandbox {NOWHERE} is not visible here)"
    )


@pytest_twisted.ensureDeferred
async def test_connected_networks(setup: Setup) -> None:
    """The container's own network is a connected route on its device, with no gateway."""
    routes = await setup.routes.routes(setup.sandbox)
    own = [r for r in routes if r.connected]
    assert [(str(r.destination), r.gateway, r.device) for r in own] == [
        (f"{setup.prefix}.0/24", "", "eth0")
    ]


@pytest_twisted.ensureDeferred
async def test_replace_and_delete(setup: Setup) -> None:
    """Replace adds or changes the next hop; delete removes, and again is no error."""
    ns = setup.sandbox
    await setup.routes.replace(ns, "10.251.0.0/16", setup.hop(1))
    assert gateways(await setup.routes.routes(ns)) == {"10.251.0.0/16": setup.hop(1)}
    await setup.routes.replace(ns, "10.251.0.0/16", setup.hop(3))
    assert gateways(await setup.routes.routes(ns)) == {"10.251.0.0/16": setup.hop(3)}
    await setup.routes.delete(ns, "10.251.0.0/16", setup.hop(3))
    assert gateways(await setup.routes.routes(ns)) == {}
    await setup.routes.delete(ns, "10.251.0.0/16", setup.hop(3))


@pytest_twisted.ensureDeferred
async def test_unreachable_next_hop(setup: Setup) -> None:
    with pytest.raises(
        PlumbingError, match=r"^ip route replace 10.252.0.0/16 via 192.0.2.77 failed"
    ):
        await setup.routes.replace(setup.sandbox, "10.252.0.0/16", "192.0.2.77")


@pytest_twisted.ensureDeferred
async def test_gone_namespace(setup: Setup) -> None:
    with pytest.raises(PlumbingError):
        await setup.routes.routes(NOWHERE)


def test_parse_routes_of_both_families() -> None:
    four = (
        b'[{"dst":"default","gateway":"172.17.0.1","dev":"eth0","flags":[]},'
        b'{"dst":"172.17.0.0/16","dev":"eth0","protocol":"kernel","scope":"link",'
        b'"prefsrc":"172.17.0.2","flags":[]},'
        b'{"type":"broadcast","dst":"172.17.255.255","dev":"eth0"},'
        b'{"dst":"10.1.2.3","gateway":"172.17.0.9","dev":"eth0","flags":[]}]'
    )
    six = (
        b'[{"dst":"fd00::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[]},'
        b'{"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[]},'
        b'{"dst":"default","gateway":"fd00::1","dev":"eth0","flags":[]}]'
    )
    parsed = parse_routes(four, 4) + parse_routes(six, 6)
    assert [(str(r.destination), r.gateway, r.connected) for r in parsed] == [
        ("0.0.0.0/0", "172.17.0.1", False),
        ("172.17.0.0/16", "", True),
        ("10.1.2.3/32", "172.17.0.9", False),
        ("fd00::/64", "", True),
        ("::/0", "fd00::1", False),
    ]
