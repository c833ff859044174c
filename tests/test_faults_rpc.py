"""
Fault suite, item 4 (bad input): the daemon's teleroute RPCs under hypothesis.

Random sequences of Connect, CreateEndpoint, Join, Leave and RemoveEndpoint with bad addresses
(wrong lengths, wrong families, garbage), unknown ids and duplicate ids, against the daemon's
logic on MemoryNetlink: every call succeeds or fails with a ``CoreRefusal`` (a gRPC status),
never anything else, and no veth is made that the daemon does not track; stopping deletes them
all. Then malformed protobuf bytes to every method of the real grpc.aio server: each answered
with a status (never UNKNOWN, which would be an unhandled exception), the server keeps serving.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import tempfile
from typing import Any

import grpc
import pytest_twisted
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.python.failure import Failure

from telenet.core.aio import as_deferred
from telenet.core.interfaces import NetlinkFailure
from telenet.core.netip import encode_addr, encode_prefix
from telenet.teleroute.proto import teleroute_pb2 as pb
from telenet.teleroute.service import CoreRefusal, GrpcServerService

from .faultkit import record, scaled
from .test_teleroute import PID, Harness

IDS = ["a", "b", "c", "", "x" * 300, "é\x00"]
GOOD_V4 = [encode_addr(ipaddress.ip_address(f"172.30.0.{i}")) for i in (2, 3, 4)]
GOOD_V6 = [encode_addr(ipaddress.ip_address("fd00:30::5"))]
addresses = st.one_of(
    st.just(b""),
    st.sampled_from(GOOD_V4 + GOOD_V6),
    st.binary(max_size=20),
    st.sampled_from(
        [b"\x04", b"\x00" * 4, b"\xff" * 16, encode_prefix(ipaddress.ip_interface("10.0.0.1/24"))]
    ),
)
gateways = st.lists(
    st.one_of(
        st.binary(max_size=20),
        st.sampled_from(
            [
                encode_prefix(ipaddress.ip_interface("172.30.0.1/16")),
                encode_prefix(ipaddress.ip_interface("fd00:30::1/64")),
            ]
        ),
    ),
    max_size=3,
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), gateways, st.sampled_from([PID, 0, -1, 2**62])),
        st.tuples(st.just("create"), st.sampled_from(IDS), addresses, addresses, st.booleans()),
        st.tuples(st.just("join"), st.sampled_from(IDS)),
        st.tuples(st.just("leave"), st.sampled_from(IDS)),
        st.tuples(st.just("remove"), st.sampled_from(IDS)),
    ),
    max_size=25,
)

SEQUENCES = scaled(300, 2000)


def _settle(d: Any) -> Any:
    if not isinstance(d, defer.Deferred):
        return d
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "a teleroute call did not complete against the in-memory netlink"
    return box[0]


def test_rpc_sequences_never_crash_or_leak() -> None:
    """Random RPC sequences: a result or a CoreRefusal each; tracked veths only; none after."""
    calls = {"n": 0, "errors": 0}

    @settings(
        max_examples=SEQUENCES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(sequence=ops)
    def one(sequence: list[tuple[Any, ...]]) -> None:
        h = Harness()
        h.routes = {ipaddress.ip_network("10.96.0.0/12")}
        for op, *args in sequence:
            calls["n"] += 1
            try:
                if op == "connect":
                    result: Any = h.core.connect(pb.ConnectRequest(gateways=args[0], pid=args[1]))
                elif op == "create":
                    result = _settle(
                        h.core.create_endpoint(
                            pb.CreateEndpointRequest(
                                id=args[0], addr_ipv4=args[1], addr_ipv6=args[2], daemon=args[3]
                            )
                        )
                    )
                else:
                    method = {
                        "join": h.core.join,
                        "leave": h.core.leave,
                        "remove": h.core.remove_endpoint,
                    }[op]
                    result = _settle(method(pb.EndpointIdentifier(id=args[0])))
            except CoreRefusal:
                calls["errors"] += 1
                continue
            if isinstance(result, Failure):
                # A netlink failure (a plug-in pid that does not exist) is INTERNAL on the wire.
                assert isinstance(result.value, CoreRefusal | NetlinkFailure), (op, args, result)
                calls["errors"] += 1
            # Every tp-* link in the daemon's netns belongs to a pair it tracks.
            tracked = {pair.host for pair in h.core.pairs.values()}
            present = {n for n in h.netlink.links_by_name if n.startswith("tp-")}
            assert present <= tracked, (op, args, present - tracked)
        _settle(h.core.stop())
        left = [n for n in h.netlink.links_by_name if n.startswith("tp-")]
        assert left == [], left

    one()
    record(
        "fuzz-teleroute-rpc-logic", sequences=SEQUENCES, calls=calls["n"], errors=calls["errors"]
    )
    assert calls["errors"] > 0


REQUEST_TYPES = {"Connect": pb.ConnectRequest, "CreateEndpoint": pb.CreateEndpointRequest}


def _parses(method: str, payload: bytes) -> bool:
    """
    Whether grpc can decode ``payload`` as the method's request.

    Bytes that cannot be decoded never reach the servicer: grpc itself answers (UNKNOWN for a
    streaming method, INTERNAL otherwise).
    """
    try:
        REQUEST_TYPES.get(method, pb.EndpointIdentifier).FromString(payload)
    except DecodeError:
        return False
    return True


MALFORMED = scaled(300, 2000)
METHODS = ["Connect", "CreateEndpoint", "RemoveEndpoint", "Join", "Leave"]


@pytest_twisted.ensureDeferred
async def test_malformed_protobuf_over_grpc() -> None:
    """Garbage request bytes to every RPC of the real server: a status each, never UNKNOWN."""
    harness = Harness()
    rng = random.Random(6)
    codes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="tntest-") as tmp:
        target = f"unix:{os.path.join(tmp, 'teleroute.sock')}"
        service = GrpcServerService(harness.core, [target], grace=0.5)
        service.startService()
        await service.whenListening()
        try:

            async def go() -> None:
                async with grpc.aio.insecure_channel(target) as channel:
                    for i in range(MALFORMED):
                        method = METHODS[i % len(METHODS)]
                        size = rng.choice([0, 1, 2, 5, 17, 64, 300])
                        payload = bytes(rng.getrandbits(8) for _ in range(size))
                        path = f"/telepresence.teleroute.Teleroute/{method}"
                        try:
                            if method == "Connect":
                                stream = channel.unary_stream(path)(payload, timeout=5)
                                await stream.read()
                                stream.cancel()
                                code = "OK"
                            else:
                                await channel.unary_unary(path)(payload, timeout=5)
                                code = "OK"
                        except grpc.aio.AioRpcError as e:
                            code = e.code().name
                        codes[code] = codes.get(code, 0) + 1
                        assert code != "DEADLINE_EXCEEDED", (method, payload)
                        if _parses(method, payload):
                            # Our servicer ran: an unhandled exception there is UNKNOWN.
                            assert code != "UNKNOWN", (method, payload)
                    # Still serving well-formed calls.
                    joined = channel.unary_unary(
                        "/telepresence.teleroute.Teleroute/Join",
                        request_serializer=pb.EndpointIdentifier.SerializeToString,
                    )
                    try:
                        await joined(pb.EndpointIdentifier(id="never-made"), timeout=5)
                    except grpc.aio.AioRpcError as e:
                        assert e.code() == grpc.StatusCode.NOT_FOUND

            await as_deferred(asyncio.wait_for(go(), 300))
        finally:
            await service.stopService()
    record("fuzz-teleroute-rpc-wire", requests=MALFORMED, codes=codes)
