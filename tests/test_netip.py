"""Go net/netip binary codec: golden bytes as Go's MarshalBinary writes them."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telenet.core import netip
from telenet.core.netip import NetipError

A = ipaddress.ip_address
I = ipaddress.ip_interface  # noqa: E741

GOLDEN_ADDRS = [
    # (text, bytes Go's netip.MustParseAddr(text).MarshalBinary() gives)
    ("10.0.0.1", bytes([10, 0, 0, 1])),
    ("172.20.0.2", bytes.fromhex("ac140002")),
    ("0.0.0.0", bytes(4)),
    ("::1", bytes(15) + b"\x01"),
    ("fd00::2", bytes.fromhex("fd000000000000000000000000000002")),
    ("::ffff:1.2.3.4", bytes(10) + b"\xff\xff" + bytes([1, 2, 3, 4])),
    ("fe80::1%eth0", bytes.fromhex("fe800000000000000000000000000001") + b"eth0"),
]

GOLDEN_PREFIXES = [
    ("10.0.0.0/8", bytes([10, 0, 0, 0, 8])),
    ("172.20.0.1/16", bytes([172, 20, 0, 1, 16])),  # Docker gateway: host bits kept
    ("0.0.0.0/0", bytes(5)),
    ("192.168.1.7/32", bytes([192, 168, 1, 7, 32])),
    ("fd00:1::/64", bytes.fromhex("fd000001000000000000000000000000") + b"\x40"),
    ("::/0", bytes(17)),
    ("2001:db8::1/128", bytes.fromhex("20010db8000000000000000000000001") + b"\x80"),
]


@pytest.mark.parametrize("text,golden", GOLDEN_ADDRS)
def test_addr_golden(text: str, golden: bytes) -> None:
    """Addresses encode to Go's bytes and decode back to the same address."""
    assert netip.encode_addr(A(text)) == golden
    assert netip.decode_addr(golden) == A(text)


def test_zone_survives_round_trip() -> None:
    """An IPv6 zone is appended after the 16 address bytes and restored on decoding."""
    addr = netip.decode_addr(bytes.fromhex("fe800000000000000000000000000001") + b"eth0")
    assert isinstance(addr, ipaddress.IPv6Address)
    assert addr.scope_id == "eth0"


def test_zero_addr_is_empty() -> None:
    """The zero (invalid) Addr is no bytes at all, both ways."""
    assert netip.encode_addr(None) == b""
    assert netip.decode_addr(b"") is None


@pytest.mark.parametrize("size", [1, 3, 5, 8, 15])
def test_addr_bad_length(size: int) -> None:
    """Lengths other than 0, 4 or 16+ are refused with a NetipError (a ValueError)."""
    with pytest.raises(NetipError, match=f"not {size}"):
        netip.decode_addr(bytes(size))
    assert issubclass(NetipError, ValueError)


def test_addr_bad_zone() -> None:
    """A zone that is not text is refused."""
    with pytest.raises(NetipError, match="zone"):
        netip.decode_addr(bytes(16) + b"\xff\xfe")


@pytest.mark.parametrize("text,golden", GOLDEN_PREFIXES)
def test_prefix_golden(text: str, golden: bytes) -> None:
    """Prefixes encode to the address bytes plus one length byte, and decode back."""
    assert netip.encode_prefix(I(text)) == golden
    assert netip.decode_prefix(golden) == I(text)


def test_prefix_from_network() -> None:
    """A network encodes like its network address with its length."""
    assert netip.encode_prefix(ipaddress.ip_network("10.96.0.0/12")) == bytes([10, 96, 0, 0, 12])
    assert netip.decode_network(bytes([10, 96, 1, 1, 12])) == ipaddress.ip_network("10.96.0.0/12")


def test_prefix_drops_zone() -> None:
    """Go drops the zone of a prefix's address; so do we."""
    encoded = netip.encode_prefix(I("fe80::1%eth0/64"))
    assert encoded == bytes.fromhex("fe800000000000000000000000000001") + b"\x40"


def test_zero_prefix() -> None:
    """The zero Prefix is an empty Addr plus a length byte (0xff in Go >= 1.22)."""
    assert netip.encode_prefix(None) == b"\xff"
    assert netip.decode_prefix(b"\xff") is None
    assert netip.decode_prefix(b"\x00") is None
    assert netip.decode_network(b"\xff") is None


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "at least 1 byte"),
        (bytes([10, 0, 0, 1, 33]), "prefix length 33 is too long for IPv4"),
        (bytes(16) + b"\x81", "prefix length 129 is too long for IPv6"),
        (bytes([10, 0, 0, 8]), "not 3"),
        (bytes([10, 0, 0, 0, 0, 8]), "not 5"),
    ],
)
def test_prefix_bad_bytes(data: bytes, match: str) -> None:
    """Wrong sizes and impossible lengths raise NetipError with a clear message."""
    with pytest.raises(NetipError, match=match):
        netip.decode_prefix(data)


def test_encode_rejects_non_addresses() -> None:
    """Encoding something that is not an address or prefix is a NetipError, not garbage."""
    with pytest.raises(NetipError):
        netip.encode_addr("10.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(NetipError):
        netip.encode_prefix("10.0.0.0/8")  # type: ignore[arg-type]


@given(st.ip_addresses())
def test_addr_round_trip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """Any address survives encode then decode; the size says the family."""
    data = netip.encode_addr(addr)
    assert len(data) == (4 if addr.version == 4 else 16)
    assert netip.decode_addr(data) == addr


@given(st.ip_addresses(), st.integers(min_value=0, max_value=128))
def test_prefix_round_trip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> None:
    """Any valid prefix survives encode then decode, host bits included."""
    bits = min(bits, addr.max_prefixlen)
    prefix = ipaddress.ip_interface((addr, bits))
    data = netip.encode_prefix(prefix)
    assert len(data) == len(addr.packed) + 1 and data[-1] == bits
    assert netip.decode_prefix(data) == prefix
