"""The teleroute network's subnet: first candidate overlapping nothing blocked."""

from __future__ import annotations

import ipaddress
import itertools

from telenet.cli.subnets import candidates, choose_subnet


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
