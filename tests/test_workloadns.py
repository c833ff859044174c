"""``NetnsWorkloads`` over a made-up /proc and a recording command runner (no kernel)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet import defer

from telenet.netplugin.interfaces import GONE, MISSING, PRESENT
from telenet.netplugin.plumbing import PlumbingError
from telenet.netplugin.workloadns import NetnsWorkloads, interface_holding

from .helpers import result_of

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 172.21.0.0/16 2 0 2
        |-- 172.21.0.3
           /32 host LOCAL
"""
ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "tpd-3\t000015AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
)
IF_INET6 = "fd000000000000000000000000000003 07 40 00 80    tpd-3\n"


def fake_proc(tmp_path: Any) -> Any:
    """Ourselves, and a workload (pid 20) holding 172.21.0.3 and fd00::3 on tpd-3."""
    proc = tmp_path / "proc"
    for pid, netns in (("self", "net:[1]"), ("10", "net:[1]"), ("20", "net:[7]")):
        (proc / pid / "ns").mkdir(parents=True)
        (proc / pid / "net").mkdir()
        os.symlink(netns, proc / pid / "ns" / "net")
        workload = pid == "20"
        (proc / pid / "net" / "fib_trie").write_text(FIB_TRIE if workload else "")
        (proc / pid / "net" / "if_inet6").write_text(IF_INET6 if workload else "")
        (proc / pid / "net" / "route").write_text(ROUTE if workload else "")
        (proc / pid / "net" / "dev").write_text("  lo: 0 0\n  eth0: 0 0\n" if workload else "")
    return proc


def test_interface_holding(tmp_path: Any) -> None:
    net = str(fake_proc(tmp_path) / "20" / "net")
    assert interface_holding(net, "172.21.0.3") == "tpd-3"
    assert interface_holding(net, "fd00::3") == "tpd-3"
    assert interface_holding(net, "10.9.9.9") == ""
    assert interface_holding(str(tmp_path / "nowhere"), "172.21.0.3") == ""


def test_identify_and_look(tmp_path: Any) -> None:
    proc = fake_proc(tmp_path)
    plumbing = NetnsWorkloads(lambda argv: defer.succeed((b"", b"", 0)), proc=str(proc))
    assert result_of(plumbing.identify(["172.21.0.3"])) == ("net:[7]", "tpd-3")
    assert result_of(plumbing.identify(["fd00::3"])) == ("net:[7]", "tpd-3")
    assert result_of(plumbing.identify(["172.21.0.9"])) is None
    assert result_of(plumbing.look("", "net:[7]", ["172.21.0.3"])) == PRESENT
    assert result_of(plumbing.look("", "net:[7]", ["172.21.0.9"])) == MISSING
    assert result_of(plumbing.look("/nonexistent", "net:[99]", ["172.21.0.3"])) == GONE


def test_attach_commands(tmp_path: Any) -> None:
    """Moved in by pid; inside: the name, the addresses, up, then the routes."""
    proc = fake_proc(tmp_path)
    commands: list[list[str]] = []

    def run(argv: list[str]) -> defer.Deferred[tuple[bytes, bytes, int]]:
        commands.append([os.path.basename(argv[0]), *argv[1:]])
        return defer.succeed((b"", b"", 0))

    plumbing = NetnsWorkloads(run, proc=str(proc))
    routes = [("10.123.0.0/16", "172.21.0.4"), ("10.124.0.0/16", "")]
    name = result_of(plumbing.attach("tp-new", "", "net:[7]", "tpd-0", ["172.21.0.3/16"], routes))
    inside = ["nsenter", "--target", "20", "--net", "--"]
    assert name == "tpd-0"
    assert commands == [
        ["ip", "link", "set", "dev", "tp-new", "netns", "20"],
        [*inside, "ip", "link", "set", "dev", "tp-new", "name", "tpd-0"],
        [*inside, "ip", "addr", "add", "172.21.0.3/16", "dev", "tpd-0"],
        [*inside, "ip", "link", "set", "dev", "tpd-0", "up"],
        [*inside, "ip", "route", "replace", "10.123.0.0/16", "via", "172.21.0.4", "dev", "tpd-0"],
        [*inside, "ip", "route", "replace", "10.124.0.0/16", "dev", "tpd-0"],
    ]


def test_attach_errors(tmp_path: Any) -> None:
    proc = fake_proc(tmp_path)

    def refuse(argv: list[str]) -> defer.Deferred[tuple[bytes, bytes, int]]:
        return defer.succeed((b"", b"nsenter: Operation not permitted\n", 1))

    plumbing = NetnsWorkloads(refuse, proc=str(proc))
    with pytest.raises(PlumbingError, match=r"net:\[99\]; sandbox \?\) is not visible here"):
        result_of(plumbing.attach("tp-x", "", "net:[99]", "tpd-0", [], []))
    with pytest.raises(PlumbingError, match="Operation not permitted"):
        result_of(plumbing.attach("tp-x", "", "net:[7]", "tpd-0", [], []))
