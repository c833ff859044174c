"""The demo cluster's Docker objects, and its sample export, against MemoryDocker."""

from __future__ import annotations

import os
from typing import Any

import pytest

from telenet.cli.connection import CLIError
from telenet.cli.demo import LABEL_DEMO, DemoCluster, format_cluster
from telenet.democluster import SAMPLE_FILES, write_samples
from telenet.testing import MemoryDocker


def test_up_info_and_down() -> None:
    """up makes a labelled network and container and reports the addresses; down removes them."""
    docker = MemoryDocker()
    docker.logs["p-cluster"] = docker.logs["p-echo-other"] = "starting\nready\n"
    info = DemoCluster(docker, "p", "telenet", ("x.example=self",)).up(say=lambda _: None)
    assert info["network"] == info["container"] == "p-cluster"
    assert info["agent"] == f"{info['ip']}:8022" and info["cluster_dns"] == info["ip"]
    assert info["other_container"] == "p-echo-other" and info["other_ip"] != info["ip"]
    container = docker.container("p-cluster")
    assert container is not None
    assert container["Config"]["Labels"] == {LABEL_DEMO: "p"}
    command = container["Config"]["Cmd"]
    assert command[:3] == ["python3", "-m", "telenet.democluster"]
    # The second namespace's service is another container, named in the cluster's DNS.
    records = [command[i + 1] for i, arg in enumerate(command) if arg == "--record"]
    assert records == [
        "echo.default.svc.cluster.local=self",
        f"echo.other.svc.cluster.local={info['other_ip']}",
        "x.example=self",
    ]
    other = docker.container("p-echo-other")
    assert other is not None and "--http-only" in other["Config"]["Cmd"]
    assert "agent    " in format_cluster(info) and "echo.other" in format_cluster(info)
    # A second up finds it running and makes nothing new.
    calls = len(docker.calls)
    assert DemoCluster(docker, "p", "telenet").up(say=lambda _: None) == info
    assert docker.calls[calls:] == []
    DemoCluster(docker, "p", "telenet").down()
    assert docker.container_names() == [] and docker.network_names() == ["bridge"]


def test_down_leaves_what_is_not_the_demos() -> None:
    """A network or container of the same name without the demo's label is not removed."""
    docker = MemoryDocker()
    docker.create_network("p-cluster", "bridge", {}, {}, None, False)
    DemoCluster(docker, "p", "telenet").down()
    assert "p-cluster" in docker.network_names()


def test_cluster_that_does_not_start() -> None:
    """A cluster that exits: its last log line; an image without the module: rebuild it."""
    docker = MemoryDocker()
    docker.logs["p-echo-other"] = "/opt/telenet/bin/python3: No module named telenet.democluster"
    original = docker.start_container

    def start_then_exit(container: str) -> None:
        original(container)
        docker.kill(container, 1)

    docker.start_container = start_then_exit  # type: ignore[method-assign]
    with pytest.raises(CLIError, match="predates the demo cluster: rebuild it"):
        DemoCluster(docker, "p", "telenet").up(say=lambda _: None)
    assert docker.container_names() == [] and docker.network_names() == ["bridge"]


def test_sample_export(tmp_path: Any) -> None:
    """The agent's export holds the sample container's service account files."""
    write_samples(str(tmp_path), "echo")
    for relative, text in SAMPLE_FILES.items():
        with open(os.path.join(str(tmp_path), "echo", relative)) as f:
            assert f.read() == text


def test_cluster_records_serve_what_a_cluster_dns_does() -> None:
    """A, AAAA, TXT, SRV of a service and PTR of its address; NXDOMAIN for the rest."""
    from twisted.names import dns
    from twisted.names.error import DomainError

    from telenet.democluster import ClusterRecords
    from tests.helpers import failure_of, result_of

    records = ClusterRecords(
        {"echo.default.svc.cluster.local": "10.96.0.42", "v6.default.svc.cluster.local": "fd00::7"}
    )

    def ask(name: str, type: int) -> list[str]:
        answers, _, _ = result_of(records.query(dns.Query(name, type, dns.IN)))
        return [str(rr.payload) for rr in answers]

    assert ask("echo.default.svc.cluster.local", dns.A) == ["<A address=10.96.0.42 ttl=5>"]
    assert ask("v6.default.svc.cluster.local", dns.AAAA) == ["<AAAA address=fd00::7 ttl=5>"]
    assert ask("echo.default.svc.cluster.local", dns.AAAA) == []
    assert "echo.default.svc.cluster.local" in ask("echo.default.svc.cluster.local", dns.TXT)[0]
    srv = ask("_http._tcp.echo.default.svc.cluster.local", dns.SRV)
    assert srv == [
        "<SRV priority=0 weight=100 target=echo.default.svc.cluster.local port=80 ttl=5>"
    ]
    assert ask("42.0.96.10.in-addr.arpa", dns.PTR) == [
        "<PTR name=echo.default.svc.cluster.local ttl=5>"
    ]
    failure_of(records.lookupAddress("nope.default.svc.cluster.local")).trap(DomainError)


def test_demo_cluster_dual_stack_service_and_own_ipv6(tmp_path: Any) -> None:
    """A name given once per family answers A and AAAA (TXT and SRV once); ``self6`` is the
    container's global IPv6 address from /proc/net/if_inet6, none without one."""
    from twisted.names import dns

    from telenet.democluster import ClusterRecords, own_ipv6
    from tests.helpers import result_of

    name = "echo.default.svc.cluster.local"
    records = ClusterRecords([(name, "10.96.0.42"), (name, "fd00:96::42")])

    def ask(type: int) -> list[str]:
        answers, _, _ = result_of(records.query(dns.Query(name, type, dns.IN)))
        return [str(rr.payload) for rr in answers]

    assert ask(dns.A) == ["<A address=10.96.0.42 ttl=5>"]
    assert ask(dns.AAAA) == ["<AAAA address=fd00:96::42 ttl=5>"]
    assert len(ask(dns.TXT)) == 1
    inet6 = tmp_path / "if_inet6"
    inet6.write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fe800000000000000042acfffe120002 2a 40 20 80     eth0\n"
        "fd000096000000000000000000000042 2a 40 00 80     eth0\n"
    )
    assert own_ipv6(str(inet6)) == "fd00:96::42"
    inet6.write_text("00000000000000000000000000000001 01 80 10 80       lo\n")
    assert own_ipv6(str(inet6)) is None
    assert own_ipv6(str(tmp_path / "missing")) is None
