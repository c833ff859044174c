"""
IDocker's contract, as the CLI uses it, asserted alike of ``MemoryDocker`` and of the real
``SDKDocker`` on dockerd (the real side is e2e: it needs dockerd and ``local/busybox``).

Everything the real side makes is named ``tntest-<tag>`` (networks, containers) or labelled
``tntest.<tag>``, and removed afterwards whatever failed. Exec on the memory side runs the
command on this machine, as busybox's ``sh`` would in the container.
"""

from __future__ import annotations

import ipaddress
import random
import re
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from telenet.cli.dockerapi import Conflict, DockerError, NotFound, SDKDocker, subnets_of
from telenet.cli.interfaces import ContainerSpec, IDocker
from telenet.testing import MemoryDocker

from .conftest import BUSYBOX


def run_here(container: dict[str, Any], argv: list[str]) -> tuple[int, bytes, bytes]:
    done = subprocess.run(argv, capture_output=True, timeout=30)
    return done.returncode, done.stdout, done.stderr


class Setup:
    """An IDocker and the unique tag of what a test makes with it."""

    def __init__(self, docker: Any) -> None:
        self.docker = docker
        self.tag = uuid.uuid4().hex[:8]
        self.made_networks: list[str] = []
        self.made_containers: list[str] = []

    def name(self, what: str) -> str:
        return f"tntest-{self.tag}-{what}"

    @property
    def label(self) -> str:
        return f"tntest.{self.tag}"

    def network(self, what: str, subnet: str | None) -> tuple[str, str]:
        name = self.name(what)
        self.made_networks.append(name)
        return name, self.docker.create_network(
            name, "bridge", {}, {self.label: what}, subnet, False
        )[0]

    def container(self, what: str, role: str = "") -> tuple[str, str]:
        name = self.name(what)
        self.made_containers.append(name)
        spec = ContainerSpec(BUSYBOX, ["sleep", "600"], name, labels={self.label: role})
        return name, self.docker.create_container(spec)

    def clean(self) -> None:
        for name in self.made_containers:
            self.docker.remove_container(name)
        for name in self.made_networks:
            try:
                self.docker.remove_network(name)
            except NotFound:
                pass


@pytest.fixture(params=["memory", pytest.param("dockerd", marks=pytest.mark.e2e)])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    if request.param == "memory":
        fake = MemoryDocker()
        fake.exec_handler = run_here
        yield Setup(fake)
        return
    request.getfixturevalue("docker_ready")
    made = Setup(SDKDocker())
    try:
        yield made
    finally:
        made.clean()


def a_subnet() -> str:
    # Random, so that a run beside others (and their leftovers) rarely overlaps.
    return f"10.249.{random.randrange(256)}.0/24"


def test_provides_interface(setup: Setup) -> None:
    """Both implementations provide every IDocker method."""
    assert verifyObject(IDocker, setup.docker)
    assert re.fullmatch(r"\d+\.\d+", setup.docker.api_version())
    assert setup.docker.image_exists(BUSYBOX)
    assert not setup.docker.image_exists("local/tntest-missing")


def test_dual_stack_network(setup: Setup) -> None:
    """
    create_network with an IPv6 subnet: both pools, IPv6 enabled, and no daemon-level IPv6
    needed for it (CI's engines run without ``--ipv6``); asked for no IPv4, an engine before
    API 1.47 keeps IPv4 and says so in the warning.
    """
    d = setup.docker
    subnet, subnet6 = a_subnet(), f"fd00:7e1e:{random.randrange(65536):x}::/64"
    name = setup.name("dual")
    setup.made_networks.append(name)
    _, warning = d.create_network(name, "bridge", {}, {}, subnet, True, subnet6=subnet6)
    found = d.network(name)
    assert found is not None and found["EnableIPv6"] is True and warning == ""
    assert sorted(subnets_of(found)) == sorted([subnet, subnet6])
    name = setup.name("v6only")
    setup.made_networks.append(name)
    subnet6 = f"fd00:7e1e:{random.randrange(65536):x}::/64"
    _, warning = d.create_network(name, "bridge", {}, {}, a_subnet(), True, subnet6, ipv4=False)
    found = d.network(name)
    assert found is not None and subnet6 in subnets_of(found)
    if tuple(int(p) for p in d.api_version().split(".")) < (1, 47):
        assert "cannot make a network without IPv4" in warning, warning
        assert any(":" not in s for s in subnets_of(found))


def test_network_lifecycle(setup: Setup) -> None:
    """create_network makes an internal network found by name and id; rm removes it."""
    d = setup.docker
    subnet = a_subnet()
    name, nid = setup.network("net", subnet)
    found = d.network(name)
    assert found is not None
    assert (found["Name"], found["Id"], found["Driver"]) == (name, nid, "bridge")
    assert found["Internal"] is True and found["Labels"] == {setup.label: "net"}
    assert subnets_of(found) == [subnet]
    assert (d.network(nid) or {}).get("Name") == name
    assert name in [n["Name"] for n in d.networks()]
    with pytest.raises(Conflict):
        d.create_network(name, "bridge", {}, {}, None, False)
    d.remove_network(name)
    assert d.network(name) is None
    with pytest.raises(NotFound):
        d.remove_network(name)


def test_network_without_subnet_gets_one(setup: Setup) -> None:
    """Without a subnet, Docker picks one from its pools."""
    name, _ = setup.network("auto", None)
    (subnet,) = subnets_of(setup.docker.network(name) or {})
    assert ipaddress.ip_network(subnet).version == 4


def test_container_lifecycle(setup: Setup) -> None:
    """create, start, exec, stop, remove, as ``docker inspect`` shows them."""
    d = setup.docker
    name, cid = setup.container("c")
    found = d.container(name)
    assert found is not None
    assert (found["Id"], found["Name"]) == (cid, "/" + name)
    assert found["Config"]["Image"] == BUSYBOX
    assert found["Config"]["Labels"] == {setup.label: ""}
    assert found["State"]["Running"] is False
    assert (d.container(cid) or {}).get("Name") == "/" + name
    with pytest.raises(Conflict):
        setup.container("c")
    d.start_container(name)
    assert (d.container(name) or {})["State"]["Running"] is True
    assert d.exec_in(name, ["sh", "-c", "echo out; echo err >&2; exit 3"]) == (
        3,
        b"out\n",
        b"err\n",
    )
    d.stop_container(name, 1)
    assert (d.container(name) or {})["State"]["Running"] is False
    with pytest.raises(Conflict, match="(?i)is not running"):
        d.exec_in(name, ["true"])
    d.remove_container(name)
    assert d.container(name) is None
    d.remove_container(name)  # a missing one is fine


def test_labels_filter(setup: Setup) -> None:
    """containers(label) finds running or not, by KEY or KEY=VALUE."""
    d = setup.docker
    a, _ = setup.container("a", "one")
    b, _ = setup.container("b", "two")
    d.start_container(a)

    def names(label: str) -> set[str]:
        return {c["Name"].lstrip("/") for c in d.containers(label)}

    assert names(setup.label) == {a, b}
    assert names(f"{setup.label}=two") == {b}
    assert names(f"{setup.label}=three") == set()


def test_connect_disconnect(setup: Setup) -> None:
    """A running container joins a network with an address of its subnet, and leaves it."""
    d = setup.docker
    subnet = a_subnet()
    net, _ = setup.network("net", subnet)
    name, cid = setup.container("c")
    d.start_container(name)
    d.connect(net, name, None)
    members = (d.network(net) or {})["Containers"]
    assert list(members) == [cid]
    address = ipaddress.ip_interface(members[cid]["IPv4Address"])
    assert address.network == ipaddress.ip_network(subnet)
    settings = (d.container(name) or {})["NetworkSettings"]["Networks"][net]
    assert settings["IPAddress"] == str(address.ip)
    with pytest.raises(DockerError, match="already exists"):
        d.connect(net, name, None)
    with pytest.raises(DockerError, match="active endpoints"):
        d.remove_network(net)
    d.disconnect(net, name)
    assert (d.network(net) or {})["Containers"] == {}
    assert net not in (d.container(name) or {})["NetworkSettings"]["Networks"]
    d.remove_network(net)


def test_missing_objects(setup: Setup) -> None:
    """What is not there: None to a lookup, NotFound to an action, nothing to a removal."""
    d = setup.docker
    missing = setup.name("missing")
    assert d.container(missing) is None and d.network(missing) is None
    with pytest.raises(NotFound):
        d.start_container(missing)
    with pytest.raises(NotFound):
        d.exec_in(missing, ["true"])
    with pytest.raises(NotFound):
        d.create_container(ContainerSpec("local/tntest-missing", ["true"], missing))
    d.stop_container(missing, 1)
    d.remove_container(missing)
    name, _ = setup.container("c")
    with pytest.raises(NotFound):
        d.connect(missing, name, None)
    with pytest.raises(NotFound):
        d.disconnect(missing, name)
