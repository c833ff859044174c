"""
connect and the IP families: ``docker.enableIPv4`` / ``docker.enableIPv6`` as Telepresence reads
them, the IPv6 subnet of a dual-stack teleroute network, and a network without IPv4 on engines
that can and cannot make one.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from telenet.cli.config import Config
from telenet.cli.connection import CLIError
from telenet.cli.dockerapi import SDKDocker
from telenet.cli.status import format_status
from telenet.cli.subnets import IPV6_TRIES, choose_subnet6

from .test_cli_connect import World


def counter_bytes() -> Any:
    """Deterministic "random" bytes: 1, 2, 3, … in the last byte of each draw."""
    n = 0

    def draw(size: int) -> bytes:
        nonlocal n
        n += 1
        return n.to_bytes(size, "big")

    return draw


def test_choose_subnet6_is_a_ula_64_clear_of_blocked_ones() -> None:
    """A /64 of fd00::/8; a blocked one (IPv6 only counts) is skipped for the next draw."""
    first = choose_subnet6(["10.0.0.0/8"], counter_bytes())
    assert first == ipaddress.IPv6Network("fd00:0:0:1::/64")
    assert first.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    second = choose_subnet6([first, "172.16.0.0/12"], counter_bytes())
    assert second == ipaddress.IPv6Network("fd00:0:0:2::/64")


def test_choose_subnet6_gives_up_after_its_tries() -> None:
    """Every draw blocked (fd00::/8 taken): None, after IPV6_TRIES draws."""
    draws = []

    def draw(size: int) -> bytes:
        draws.append(size)
        return bytes(size)

    assert choose_subnet6(["fd00::/8"], draw) is None
    assert len(draws) == IPV6_TRIES


def world_with_bridge(ipv6: bool, config: Config | None = None) -> World:
    world = World(config)
    world.connector.networks.random_bytes = counter_bytes()
    bridge = world.docker.network("bridge")
    assert bridge is not None
    world.docker.networks_by_id[bridge["Id"]]["EnableIPv6"] = ipv6
    return world


def created(world: World) -> list[tuple[Any, ...]]:
    return [c for c in world.docker.calls if c[0] == "create_network_ipv6"]


def test_dual_stack_when_the_default_bridge_has_ipv6() -> None:
    """
    Default config, bridge with IPv6: the network is dual-stack with a chosen ULA /64 clear of
    other networks' IPv6 subnets, and the daemon gets the IPv6 sysctls.
    """
    world = world_with_bridge(True)
    world.docker.create_network("other", "bridge", {}, {}, None, True, subnet6="fd00:0:0:1::/64")
    conn = world.connect("blue")
    network = world.docker.network("blue")
    assert network is not None and network["EnableIPv6"]
    subnets = [c["Subnet"] for c in network["IPAM"]["Config"]]
    assert subnets[1] == "fd00:0:0:2::/64", subnets
    assert created(world)[-1] == ("create_network_ipv6", "blue", "fd00:0:0:2::/64", True)
    status = world.connector.status("blue")
    assert status["network"]["subnets"] == subnets
    assert f"network: blue ({', '.join(subnets)}, driver" in format_status(status)
    sysctls = world.docker.containers_by_id[conn.container_id]["spec"].sysctls
    assert sysctls["net.ipv6.conf.all.disable_ipv6"] == "0"
    assert sysctls["net.ipv6.conf.all.forwarding"] == "1"


@pytest.mark.parametrize(
    "bridge_ipv6,config",
    [(False, Config()), (True, Config(enable_ipv6=False))],
    ids=["bridge-without-ipv6", "enableIPv6-false"],
)
def test_ipv4_only(bridge_ipv6: bool, config: Config) -> None:
    """IPv6 needs both: enableIPv6 (default true) and IPv6 on Docker's default bridge."""
    world = world_with_bridge(bridge_ipv6, config)
    conn = world.connect("blue")
    network = world.docker.network("blue")
    assert network is not None and not network["EnableIPv6"]
    assert created(world) == []
    sysctls = world.docker.containers_by_id[conn.container_id]["spec"].sysctls
    assert "net.ipv6.conf.all.forwarding" not in sysctls


def test_enable_ipv4_false_asks_for_ipv6_only_and_maps_the_host() -> None:
    """
    enableIPv4: false: the plug-ins reach the daemon at its IPv4-mapped IPv6 address (as
    Telepresence does), the engine is asked for a network without IPv4, and an engine that
    cannot make one says so in a warning.
    """
    world = world_with_bridge(True, Config(enable_ipv4=False))
    world.connect("blue")
    network = world.docker.network("blue")
    assert network is not None
    host = network["Options"]["host"]
    assert host.startswith("::ffff:") and ipaddress.ip_address(host).ipv4_mapped is not None
    assert created(world)[-1][-1] is False
    assert any("cannot make a network without IPv4" in line for line in world.said), world.said


def test_both_families_disabled_is_an_error() -> None:
    """enableIPv4: false and no IPv6 (disabled, or not on the bridge): Telepresence's error."""
    world = world_with_bridge(False, Config(enable_ipv4=False))
    with pytest.raises(CLIError, match="both the IPv4 and IPv6 families are disabled"):
        world.connect("blue")


class FakeAPI:
    """The docker-py low-level calls SDKDocker.create_network makes."""

    def __init__(self, api_version: str) -> None:
        self.api_version = api_version
        self.calls: list[tuple[str, Any]] = []

    def version(self) -> dict[str, str]:
        return {"ApiVersion": self.api_version}

    def create_network(self, name: str, **kw: Any) -> dict[str, str]:
        self.calls.append(("create_network", {"name": name, **kw}))
        return {"Id": "n1", "Warning": ""}

    def _url(self, path: str) -> str:
        return path

    def _post_json(self, url: str, data: Any) -> Any:
        self.calls.append(("post", (url, data)))
        return "response"

    def _result(self, response: Any, json: bool = False) -> dict[str, str]:
        return {"Id": "n2"}


class FakeClient:
    def __init__(self, api: FakeAPI) -> None:
        self.api = api


def sdk(api_version: str) -> tuple[SDKDocker, FakeAPI]:
    api = FakeAPI(api_version)
    return SDKDocker(client=FakeClient(api)), api


def test_sdk_dual_stack_pools() -> None:
    """Both pools in the IPAM config, IPv6 enabled, through docker-py's create_network."""
    docker, api = sdk("1.41")
    assert docker.create_network(
        "blue", "teleroute", {}, {}, "172.16.0.0/16", True, subnet6="fd00:1::/64"
    ) == ("n1", "")
    [(_, kw)] = api.calls
    assert [p["Subnet"] for p in kw["ipam"]["Config"]] == ["172.16.0.0/16", "fd00:1::/64"]
    assert kw["enable_ipv6"] is True


@pytest.mark.parametrize("version", ["1.41", "1.45"])
def test_sdk_without_ipv4_on_an_older_engine(version: str) -> None:
    """Before API 1.47 the network keeps IPv4 (and its subnet), with a warning that says so."""
    docker, api = sdk(version)
    network_id, warning = docker.create_network(
        "blue", "teleroute", {}, {}, "172.16.0.0/16", True, subnet6="fd00:1::/64", ipv4=False
    )
    assert network_id == "n1"
    assert warning == (
        f"Docker API {version} cannot make a network without IPv4 (API 1.47, Docker 28, can): "
        "blue has IPv4 too"
    )
    [(what, kw)] = api.calls
    assert what == "create_network"
    assert [p["Subnet"] for p in kw["ipam"]["Config"]] == ["172.16.0.0/16", "fd00:1::/64"]


def test_sdk_without_ipv4_on_api_1_47() -> None:
    """API 1.47 and later: EnableIPv4 false and the IPv6 pool alone."""
    docker, api = sdk("1.47")
    assert docker.create_network(
        "blue", "teleroute", {"host": "::ffff:172.17.0.2"}, {}, "172.16.0.0/16", True,
        subnet6="fd00:1::/64", ipv4=False,
    ) == ("n2", "")  # fmt: skip
    [(what, (url, body))] = api.calls
    assert (what, url) == ("post", "/networks/create")
    assert body["EnableIPv4"] is False and body["EnableIPv6"] is True and body["Internal"]
    assert [p["Subnet"] for p in body["IPAM"]["Config"]] == ["fd00:1::/64"]
    assert body["Options"] == {"host": "::ffff:172.17.0.2"}
