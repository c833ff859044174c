"""The teleroute network's subnet: first candidate overlapping nothing blocked."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path
from typing import Any

import pytest

from telenet.cli.config import parse_config
from telenet.cli.connection import CLIError
from telenet.cli.dockerapi import subnets_of
from telenet.cli.subnets import (
    Taken,
    candidates,
    check_docker_subnet,
    choose_subnet,
    collision,
    host_routes,
)

from .test_cli_connect import World


@pytest.fixture
def world() -> World:
    return World()


def test_candidate_order() -> None:
    """172.16-31/16 first, then 10/8 in /20s, then in /24s, then 192.168/16 in /24s."""
    all_ = list(candidates())
    assert [str(n) for n in all_[:2]] == ["172.16.0.0/16", "172.17.0.0/16"]
    assert str(all_[15]) == "172.31.0.0/16"
    assert [str(n) for n in all_[16:18]] == ["10.0.0.0/20", "10.0.16.0/20"]
    assert str(all_[16 + 4096]) == "10.0.0.0/24"
    assert str(all_[16 + 4096 + 65536]) == "192.168.0.0/24"
    assert len(all_) == 16 + 4096 + 65536 + 256


def test_nothing_blocked() -> None:
    """With nothing in the way the first candidate is taken."""
    assert str(choose_subnet([])) == "172.16.0.0/16"


def test_blocked_16s_are_skipped() -> None:
    """Docker's own networks (172.16, 172.17, 172.18) push the choice to 172.19."""
    assert str(choose_subnet(["172.16.0.0/16", "172.17.0.0/16", "172.18.0.0/16"])) == (
        "172.19.0.0/16"
    )


def test_partial_overlap_skips_the_whole_16() -> None:
    """A routed /24 inside 172.20/16 (with 172.16-19 taken) skips 172.20/16."""
    blocked = [f"172.{n}.0.0/16" for n in range(16, 20)] + ["172.20.5.0/24"]
    assert str(choose_subnet(blocked)) == "172.21.0.0/16"


def test_a_wide_route_blocks_many_candidates() -> None:
    """A routed 172.16.0.0/12 covers every 172 candidate: the first 10/8 /20 is next."""
    assert str(choose_subnet(["172.16.0.0/12"])) == "10.0.0.0/20"


def test_ten_slash_eight_partly_used() -> None:
    """10.0.0.0/19 taken: the next free /20 of 10/8."""
    assert str(choose_subnet(["172.16.0.0/12", "10.0.0.0/19"])) == "10.0.32.0/20"


def test_twenties_exhausted_falls_to_24s_then_192_168() -> None:
    """Every 10/8 /20 blocked by one /24 each: a /24 of 10/8 is free; then 192.168."""
    blocked = ["172.16.0.0/12"] + [
        f"10.{a}.{b}.0/24" for a, b in itertools.product(range(256), range(0, 256, 16))
    ]
    assert str(choose_subnet(blocked)) == "10.0.1.0/24"
    assert str(choose_subnet(["172.16.0.0/12", "10.0.0.0/8"])) == "192.168.0.0/24"


def test_nothing_fits() -> None:
    """All candidate ranges blocked: None, and Docker's IPAM decides."""
    assert choose_subnet(["172.16.0.0/12", "10.0.0.0/8", "192.168.0.0/16"]) is None


def test_ipv6_and_network_objects() -> None:
    """IPv6 subnets are ignored; ip_network objects are accepted as well as strings."""
    assert str(choose_subnet(["fd00::/8", ipaddress.ip_network("172.16.0.0/16")])) == (
        "172.17.0.0/16"
    )


# -- the user's subnet: --docker-subnet and docker.subnet


def test_check_docker_subnet() -> None:
    """An IPv4 CIDR wide enough for a network; the errors name the flag or the key."""
    assert str(check_docker_subnet("172.30.1.2/16")) == "172.30.0.0/16"
    assert str(check_docker_subnet("10.9.8.0/29")) == "10.9.8.0/29"
    for text, message in [
        ("172.30.0.0", "--docker-subnet '172.30.0.0' is not a CIDR"),
        ("fd00::/64", "--docker-subnet 'fd00::/64': the network's subnet is IPv4"),
        ("10.0.0.0/30", "--docker-subnet '10.0.0.0/30': too small for a network"),
        ("127.0.0.0/16", "--docker-subnet '127.0.0.0/16': not a subnet a network can use"),
        ("0.0.0.0/0", "--docker-subnet must not be a default route"),
    ]:
        with pytest.raises(CLIError) as raised:
            check_docker_subnet(text)
        assert str(raised.value).startswith(message), raised.value
    with pytest.raises(CLIError, match="^c.yml: docker.subnet 'x' is not a CIDR"):
        check_docker_subnet("x", "c.yml: docker.subnet")


def test_host_routes_are_read_from_proc(tmp_path: Path) -> None:
    """/proc/net/route's little-endian hex; the default route left out; unreadable: none."""
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert host_routes(str(table)) == [
        Taken("172.17.0.0/16", "the host's route 172.17.0.0/16 dev docker0"),
        Taken("192.0.2.0/24", "the host's route 192.0.2.0/24 dev eth0"),
    ]
    assert host_routes(str(tmp_path / "missing")) == []


def test_collision_names_the_first_overlap() -> None:
    """Same family only; a default route is never a collision."""
    taken = [
        Taken("0.0.0.0/0", "default"),
        Taken("fd00::/8", "v6"),
        Taken("10.1.0.0/16", "a"),
        Taken("10.0.0.0/8", "b"),
    ]
    subnet = ipaddress.ip_network("10.1.2.0/24")
    assert collision(subnet, taken) == Taken("10.1.0.0/16", "a")
    assert collision(ipaddress.ip_network("192.168.9.0/24"), taken) is None


def test_connect_with_a_free_docker_subnet(world: World) -> None:
    """The network gets exactly the user's subnet, and the daemon the first address in it."""
    conn = world.connect("blue", docker_subnet="192.168.77.0/24")
    network = world.docker.network("blue")
    assert network is not None and subnets_of(network) == ["192.168.77.0/24"]
    assert conn.dns_ip() == "192.168.77.2"
    assert world.connector.status("blue")["network"]["subnet"] == "192.168.77.0/24"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            {"docker_subnet": "10.96.128.0/20", "subnets": ("10.96.0.0/16",)},
            "--docker-subnet 10.96.128.0/20 overlaps the routed subnet 10.96.0.0/16",
        ),
        (
            {"docker_subnet": "172.17.4.0/24"},
            "--docker-subnet 172.17.4.0/24 overlaps Docker network bridge (172.17.0.0/16)",
        ),
        (
            {"docker_subnet": "192.0.2.0/25"},
            "--docker-subnet 192.0.2.0/25 overlaps the host's route 192.0.2.0/24 dev eth0",
        ),
    ],
)
def test_a_colliding_docker_subnet_is_refused_before_anything_is_made(
    world: World, request_: dict[str, Any], message: str
) -> None:
    """Overlaps known before the daemon starts: one line naming both, nothing made."""
    world.host_routes = [Taken("192.0.2.0/24", "the host's route 192.0.2.0/24 dev eth0")]
    with pytest.raises(CLIError) as raised:
        world.connect("blue", **request_)
    assert str(raised.value) == message
    assert world.docker.container_names() == []
    assert world.docker.network("blue") is None
    assert not [c for c in world.docker.calls if c[0] in ("create_container", "create_network")]


def test_a_docker_subnet_on_a_route_of_the_daemon_removes_the_daemon(world: World) -> None:
    """The daemon's own routes (its VIF's) are known once it answers: refused, daemon gone."""
    world.control.base_status["routes"] = ["10.96.0.0/16"]
    with pytest.raises(CLIError) as raised:
        world.connect("blue", docker_subnet="10.96.3.0/24")
    assert str(raised.value) == (
        "--docker-subnet 10.96.3.0/24 overlaps the routed subnet 10.96.0.0/16 "
        "(a route of the daemon)"
    )
    assert world.docker.container_names() == [] and world.docker.network("blue") is None


def test_host_routes_count_only_for_an_engine_here(world: World) -> None:
    """An engine elsewhere has other routes than this machine's: they are not checked."""
    world.host_routes = [Taken("192.0.2.0/24", "the host's route 192.0.2.0/24 dev eth0")]
    world.docker.here = False
    world.connect("blue", docker_subnet="192.0.2.0/24")
    assert subnets_of(world.docker.network("blue") or {}) == ["192.0.2.0/24"]


def test_docker_subnet_from_the_config_and_the_flag_wins() -> None:
    """docker.subnet applies without the flag; its errors name the file and the key."""
    world = World(parse_config("docker: {subnet: 192.168.50.0/24}\n", "c.yml"))
    world.connect("blue")
    assert subnets_of(world.docker.network("blue") or {}) == ["192.168.50.0/24"]
    other = World(parse_config("docker: {subnet: 192.168.50.0/24}\n", "c.yml"))
    other.connect("green", docker_subnet="192.168.60.0/24")
    assert subnets_of(other.docker.network("green") or {}) == ["192.168.60.0/24"]
    bad = World(parse_config("docker: {subnet: nonsense}\n", "c.yml"))
    with pytest.raises(CLIError, match=r"^c.yml: docker.subnet 'nonsense' is not a CIDR"):
        bad.connect("blue")


def test_connect_again_with_another_docker_subnet_is_refused(world: World) -> None:
    """A running connection keeps its subnet: asking for another says how to change it."""
    world.connect("blue", docker_subnet="192.168.77.0/24")
    world.connect("blue", docker_subnet="192.168.77.0/24")
    with pytest.raises(CLIError) as raised:
        world.connect("blue", docker_subnet="192.168.78.0/24")
    assert str(raised.value) == (
        "blue is connected with network subnet 192.168.77.0/24, not 192.168.78.0/24: "
        "telenet quit --name blue first to change it"
    )
