"""
The SFTP bridge (telenet.sftpproxy) against socat on the same loopback path.

    python bench/proxy.py [--runs 5] [--size-mib 512] [--pings 2000] [--smoke]

A server process (sink and echo, Python, the same for every path) listens on loopback; the
bench reaches it directly, through ``socat TCP-LISTEN:...,fork,nodelay TCP:...,nodelay`` and
through a bridge opened with ``telenet.sftpproxy.open_bridge`` in its own process on the
asyncio reactor (as the daemon runs it). Runs alternate between the paths. It measures:

* throughput: SIZE MiB sent through one connection (1 MiB writes) until the sink has it all;
* latency: the median round trip of a 64-byte request and its echo, PINGS times per path
  over one connection each, the paths taking turns in batches; "added" is that minus the
  direct round trip. Measured twice: with every process where the scheduler puts it
  ("anywhere"), and with all of them on one CPU. On this kind of VM a wake-up across vCPUs
  costs 20-30 us, so the first mostly measures placement; the second measures what each
  hop costs.

Ratios: proxy throughput / socat throughput (target >= 0.8) and proxy added latency / socat
added latency (target <= 2), both placements.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, median, process, wait_port  # noqa: E402

CHUNK = 1 << 20
PING = 64


def serve(port: int) -> None:
    """The server: a connection starting with b"S" is a sink, b"E" an echo."""
    import threading

    listener = socket.create_server(("127.0.0.1", port), backlog=16)

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kind = conn.recv(1)
            if kind == b"S":
                buf = bytearray(CHUNK)
                while conn.recv_into(buf):
                    pass
                conn.sendall(b"ok")
            elif kind == b"E":
                while data := conn.recv(PING):
                    conn.sendall(data)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def bridge(listen: int, target: int) -> None:
    """A bridge as the daemon opens it, in this process, until killed."""
    from telenet.core.aio import install_asyncio_reactor

    install_asyncio_reactor()
    from twisted.internet import reactor
    from twisted.python.failure import Failure

    from telenet.sftpproxy import open_bridge

    def failed(reason: Failure) -> None:
        print(reason.getErrorMessage(), file=sys.stderr, flush=True)
        reactor.stop()

    open_bridge(reactor, f"tcp:{listen}:interface=127.0.0.1", "127.0.0.1", target).addErrback(
        failed
    )
    reactor.run()


def throughput(port: int, size_mib: int) -> float:
    """Seconds to push ``size_mib`` MiB through ``port`` into the sink."""
    block = memoryview(bytes(CHUNK))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"S")
        started = time.perf_counter()
        for _ in range(size_mib):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        if s.recv(2) != b"ok":
            raise RuntimeError("the sink did not confirm")
        return time.perf_counter() - started


def ping(s: socket.socket, pings: int) -> list[float]:
    """Seconds of each of ``pings`` 64-byte round trips on the echo connection ``s``."""
    payload = b"p" * PING
    times = []
    for _ in range(pings):
        started = time.perf_counter()
        s.sendall(payload)
        got = 0
        while got < PING:
            chunk = s.recv(PING - got)
            if not chunk:
                raise RuntimeError("the echo closed")
            got += len(chunk)
        times.append(time.perf_counter() - started)
    return times


def latency(ports: dict[str, int], pings: int, rounds: int = 20) -> dict[str, float]:
    """
    Median round trip per path. Round trips of a few tens of microseconds swing with the
    machine's load (and with how deeply idle vCPUs sleep), so the paths take turns in short
    batches over one connection each, and each median is over all of a path's batches.
    """
    conns = {}
    try:
        for name, port in ports.items():
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"E")
            conns[name] = s
        samples: dict[str, list[float]] = {name: [] for name in ports}
        names = list(ports)
        batch = max(pings // rounds, 1)
        for i in range(rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                samples[name] += ping(conns[name], batch)
        return {name: statistics.median(times) for name, times in samples.items()}
    finally:
        for s in conns.values():
            s.close()


@dataclass
class ProxyResult:
    seconds: dict[str, list[float]] = field(default_factory=dict)
    #: Round trips with the processes where the scheduler put them, and all on one CPU.
    rtt: dict[str, list[float]] = field(default_factory=dict)
    rtt_one_cpu: dict[str, list[float]] = field(default_factory=dict)

    def added_ratio(self, one_cpu: bool) -> float:
        """Proxy's added round trip / socat's (medians)."""
        rtt = {n: median(v) for n, v in (self.rtt_one_cpu if one_cpu else self.rtt).items()}
        return (rtt["proxy"] - rtt["direct"]) / max(rtt["socat"] - rtt["direct"], 1e-7)


@contextlib.contextmanager
def paths() -> Iterator[tuple[dict[str, int], list[int]]]:
    """The direct, socat and proxy ports, all leading to one server; and the pids serving."""
    target, via_socat, via_proxy = free_port(), free_port(), free_port()
    me = os.path.abspath(__file__)
    socat = ["socat", f"TCP-LISTEN:{via_socat},bind=127.0.0.1,reuseaddr,fork,nodelay"]
    socat.append(f"TCP:127.0.0.1:{target},nodelay")
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(process([sys.executable, me, "--serve", str(target)]))]
        wait_port(target)
        procs.append(stack.enter_context(process(socat)))
        procs.append(
            stack.enter_context(
                process([sys.executable, me, "--bridge", str(via_proxy), str(target)])
            )
        )
        wait_port(via_socat)
        wait_port(via_proxy)
        yield {"direct": target, "socat": via_socat, "proxy": via_proxy}, [p.pid for p in procs]


@contextlib.contextmanager
def one_cpu(pids: list[int]) -> Iterator[None]:
    """
    Run this process and ``pids`` on one CPU (socat's per-connection children, forked later,
    inherit it): a round trip then costs what each hop does, not where the scheduler put it.
    """
    cpu = min(os.sched_getaffinity(0))
    before = {pid: os.sched_getaffinity(pid) for pid in [0, *pids]}
    try:
        for pid in before:
            os.sched_setaffinity(pid, {cpu})
        yield
    finally:
        for pid, cpus in before.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)


def run(runs: int, size_mib: int, pings: int) -> ProxyResult:
    result = ProxyResult()
    with paths() as (ports, pids):
        order = list(ports)
        for i in range(runs):
            for name in order if i % 2 == 0 else order[::-1]:
                result.seconds.setdefault(name, []).append(throughput(ports[name], size_mib))
            for name, rtt in latency(ports, pings).items():
                result.rtt.setdefault(name, []).append(rtt)
            with one_cpu(pids):
                for name, rtt in latency(ports, pings).items():
                    result.rtt_one_cpu.setdefault(name, []).append(rtt)
    return result


def report(result: ProxyResult, size_mib: int) -> list[str]:
    lines = []
    for name, secs in result.seconds.items():
        lines.append(
            f"{name:7} throughput {size_mib / median(secs):7.0f} MiB/s "
            f"[{size_mib / max(secs):.0f}-{size_mib / min(secs):.0f}]"
        )
    for label, rtts in (("anywhere", result.rtt), ("one CPU", result.rtt_one_cpu)):
        direct = median(rtts["direct"])
        parts = []
        for name, times in rtts.items():
            added = "" if name == "direct" else f" (+{(median(times) - direct) * 1e6:.1f})"
            parts.append(f"{name} {median(times) * 1e6:.1f}{added}")
        lines.append(f"round trip us, {label:8}: " + "  ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bridge", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.bridge:
        bridge(*args.bridge)
        return 0
    if args.smoke:
        args.runs, args.size_mib, args.pings = 1, 8, 50
    result = run(args.runs, args.size_mib, args.pings)
    print("\n".join(report(result, args.size_mib)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
