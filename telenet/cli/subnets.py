# -*- test-case-name: tests.test_cli_subnets -*-
"""
The subnet of a teleroute network: one that overlaps neither the routed subnets nor any
existing Docker network (the rule of Telepresence's PR #4083).

Candidates, first fit wins: ``172.16.0.0/16`` … ``172.31.0.0/16``; ``10.0.0.0/8`` in ``/20``s;
the same in ``/24``s; ``192.168.0.0/16`` in ``/24``s. None fits: None (Docker's IPAM decides).

Also the check of the user's ``--subnet`` values (``check_subnet``).
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Iterable, Iterator

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
