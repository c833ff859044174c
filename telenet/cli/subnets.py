# -*- test-case-name: tests.test_cli_subnets -*-
"""
The subnet of a teleroute network: one that overlaps neither the routed subnets nor any
existing Docker network (the rule of Telepresence's PR #4083).

Candidates, first fit wins: ``172.16.0.0/16`` … ``172.31.0.0/16``; ``10.0.0.0/8`` in ``/20``s;
the same in ``/24``s; ``192.168.0.0/16`` in ``/24``s. None fits: None (Docker's IPAM decides).
A dual-stack network also gets an IPv6 subnet: a random unique local ``/64`` that overlaps
nothing (``choose_subnet6``).

Also the check of the user's ``--subnet`` values (``check_subnet``), and of a subnet the user
chose for the network (``--docker-subnet``, ``docker.subnet``: ``check_docker_subnet``, and
``collision`` with what is already routed or used).
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable, Iterator

import attrs

from telenet.cli.connection import CLIError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def candidates() -> Iterator[ipaddress.IPv4Network]:
    """Every candidate subnet, in the order they are tried."""
    for second in range(16, 32):
        yield ipaddress.IPv4Network(f"172.{second}.0.0/16")
    ten = ipaddress.IPv4Network("10.0.0.0/8")
    yield from ten.subnets(new_prefix=20)
    yield from ten.subnets(new_prefix=24)
    yield from ipaddress.IPv4Network("192.168.0.0/16").subnets(new_prefix=24)


def choose_subnet(blocked: Iterable[Network | str]) -> ipaddress.IPv4Network | None:
    """The first candidate overlapping no blocked subnet (IPv6 ones are ignored)."""
    ranges = []
    for item in blocked:
        net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else item
        if isinstance(net, ipaddress.IPv4Network):
            ranges.append((int(net.network_address), int(net.broadcast_address)))
    # Merged, sorted ranges: each of the ~70000 candidates costs one binary search.
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    ends = [end for _, end in merged]
    for candidate in candidates():
        first, last = int(candidate.network_address), int(candidate.broadcast_address)
        i = bisect.bisect_left(ends, first)
        if i == len(merged) or merged[i][0] > last:
            return candidate
    return None


#: How many random IPv6 subnets are tried before the choice is left to Docker.
IPV6_TRIES = 16


def choose_subnet6(
    blocked: Iterable[Network | str], random_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> ipaddress.IPv6Network | None:
    """
    An IPv6 subnet for a dual-stack teleroute network: a random ``/64`` of a unique local
    address block (``fd00::/8`` with a random 40-bit global ID and subnet ID, RFC 4193)
    overlapping no blocked subnet (IPv4 ones are ignored); None after ``IPV6_TRIES`` misses.
    Docker's IPAM has no IPv6 pool to choose from unless its daemon was given one, so telenet
    chooses, as Telepresence does for its own network.
    """
    taken = []
    for item in blocked:
        net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else item
        if isinstance(net, ipaddress.IPv6Network):
            taken.append(net)
    for _ in range(IPV6_TRIES):
        prefix = int.from_bytes(b"\xfd" + random_bytes(7), "big")
        candidate = ipaddress.IPv6Network((prefix << 64, 64))
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    return None


_CIDR = re.compile(r"^[0-9a-fA-F:.]+/\d+$")


def check_subnet(text: str, what: str = "--subnet") -> str:
    """A ``--subnet`` value, normalized; CLIError (naming ``what``) when it is not a CIDR."""
    try:
        if not _CIDR.match(text):
            raise ValueError(text)
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise CLIError(f"{what} {text!r} is not a CIDR like 10.96.0.0/12") from None
    if network.prefixlen == 0:
        raise CLIError(f"{what} must not be a default route")
    return str(network)


def check_docker_subnet(text: str, what: str = "--docker-subnet") -> ipaddress.IPv4Network:
    """
    The teleroute network's subnet the user chose; CLIError (naming ``what``) unless it is an
    IPv4 CIDR with room for the daemon and workloads (the network's IPv6 subnet, if any, is
    Docker's choice).
    """
    network = ipaddress.ip_network(check_subnet(text, what))
    if not isinstance(network, ipaddress.IPv4Network):
        raise CLIError(f"{what} {text!r}: the network's subnet is IPv4 (like 172.30.0.0/16)")
    if network.prefixlen > 29:
        raise CLIError(f"{what} {text!r}: too small for a network; use /29 or wider")
    if network.is_loopback or network.is_multicast or network.is_unspecified:
        raise CLIError(f"{what} {text!r}: not a subnet a network can use")
    return network


@attrs.frozen
class Taken:
    """Address space already in use, and what uses it, as the user should read it."""

    subnet: str
    what: str


def collision(subnet: Network, taken: Iterable[Taken]) -> Taken | None:
    """The first of ``taken`` that ``subnet`` overlaps (same address family), or None."""
    for item in taken:
        try:
            other = ipaddress.ip_network(item.subnet, strict=False)
        except ValueError:
            continue
        if other.version == subnet.version and other.prefixlen > 0 and subnet.overlaps(other):
            return item
    return None


def host_routes(path: str = "/proc/net/route") -> list[Taken]:
    """
    The IPv4 routes of this machine's main table, default route aside (``/proc/net/route``:
    hexadecimal, little-endian addresses); none when it cannot be read.
    """
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    routes = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            net = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0:
            continue
        routes.append(Taken(str(net), f"the host's route {net} dev {fields[0]}"))
    return routes
