# -*- test-case-name: tests.test_netip -*-
"""
Go ``net/netip`` binary encodings, as the teleroute gRPC messages carry them.

- **Addr** (``MarshalBinary``): 4 bytes for IPv4, 16 for IPv6 followed by the zone name when
  the address has one, and no bytes at all for the zero (invalid) Addr.
- **Prefix**: the Addr bytes (zone dropped) followed by one byte holding the prefix length.

A Go Prefix keeps the host bits of its address (a Docker gateway ``172.20.0.1/16`` stays
that), so prefixes decode to ``ipaddress`` *interfaces*; ``.network`` gives the masked subnet
and ``.ip`` the address.
"""

from __future__ import annotations

import ipaddress
from typing import TypeAlias

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Go 1.22+ marshals the zero Prefix as the empty Addr with Bits() == -1, i.e. 0xff.
ZERO_PREFIX = b"\xff"


class NetipError(ValueError):
    """Bytes that are not a valid Go netip encoding, or a value that cannot be encoded."""


def encode_addr(addr: Address | None) -> bytes:
    """``netip.Addr.MarshalBinary``: ``None`` is the zero Addr (no bytes)."""
    if addr is None:
        return b""
    if isinstance(addr, ipaddress.IPv6Address):
        return addr.packed + (addr.scope_id or "").encode()
    if isinstance(addr, ipaddress.IPv4Address):
        return addr.packed
    raise NetipError(f"not an IP address: {addr!r}")


def decode_addr(data: bytes) -> Address | None:
    """``netip.Addr.UnmarshalBinary``: empty bytes give ``None`` (the zero Addr)."""
    n = len(data)
    if n == 0:
        return None
    if n == 4:
        return ipaddress.IPv4Address(data)
    if n == 16:
        return ipaddress.IPv6Address(data)
    if n > 16:
        base = ipaddress.IPv6Address(data[:16])
        try:
            zone = data[16:].decode()
            return ipaddress.IPv6Address(f"{base}%{zone}")
        except ValueError as e:
            raise NetipError(f"bad IPv6 zone in netip.Addr: {data[16:]!r}") from e
    raise NetipError(f"netip.Addr must be 0, 4 or 16+ bytes long, not {n}: {data.hex()}")


def encode_prefix(prefix: Interface | Network | None) -> bytes:
    """
    ``netip.Prefix.MarshalBinary`` of a network or an interface (address + length).

    ``None`` is the zero Prefix. A zone on the address is dropped, as Go does.
    """
    if prefix is None:
        return ZERO_PREFIX
    if isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
        addr: Address = prefix.network_address
        bits = prefix.prefixlen
    elif isinstance(prefix, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        addr = prefix.ip
        bits = prefix.network.prefixlen
    else:
        raise NetipError(f"not an IP prefix: {prefix!r}")
    return addr.packed + bytes([bits])


def decode_prefix(data: bytes) -> Interface | None:
    """
    ``netip.Prefix.UnmarshalBinary``: the address with its prefix length, host bits kept.

    An empty address (any length byte) is the zero Prefix, given as ``None``. A length
    beyond the address's bit length, or a wrong size, raises ``NetipError``.
    """
    if len(data) < 1:
        raise NetipError("netip.Prefix needs at least 1 byte (the prefix length)")
    addr = decode_addr(data[:-1])
    bits = data[-1]
    if addr is None:
        return None
    if bits > addr.max_prefixlen:
        raise NetipError(
            f"prefix length {bits} is too long for IPv{addr.version} in netip.Prefix {data.hex()}"
        )
    if isinstance(addr, ipaddress.IPv6Address):
        # The zone is not part of a prefix.
        addr = ipaddress.IPv6Address(addr.packed)
    return ipaddress.ip_interface((addr, bits))


def decode_network(data: bytes) -> Network | None:
    """A Prefix decoded to its masked subnet (``10.1.2.3/8`` gives ``10.0.0.0/8``)."""
    prefix = decode_prefix(data)
    return None if prefix is None else prefix.network
