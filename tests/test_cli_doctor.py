"""telenet doctor (telenet.cli.doctor, doctorprobe): every outcome of every check, with fakes."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import telenet.cli.main as cli
from telenet.cli import diagnose, doctorprobe
from telenet.cli.doctor import FAIL, OK, SKIP, WARN, Doctor, Finding, exit_code
from telenet.cli.doctorprobe import ProbeRequest
from telenet.cli.main import main
from telenet.cli.naming import LABEL_NETWORK_PLUGIN, LABEL_VOLUME_PLUGIN
from telenet.cli.subnets import Taken

from .test_cli_connect import World

SOCKETS = {"teleroute": "teleroute.sock", "telemount": "telemount.sock"}
CLUSTER = "kubernetes.default.svc.cluster.local"
DNS = "172.16.0.2:53"
CLUSTER_DNS = "10.0.0.10:53"


class Doc:
    """A connected World, the doctor over it, and what its probe and mounts answer."""

    def __init__(self, connect: bool = True) -> None:
        self.world = World()
        self.world.control.base_status["dns"] = {
            "local_address": "172.16.0.2:53",
            "cluster_dns": "10.0.0.10",
        }
        self.docker = self.world.docker
        self.seen: dict[str, Any] = {
            "grpc": None,
            "bridge": True,
            "dns": {
                f"{DNS} {CLUSTER}": {"rcode": 3, "answers": 0},
                f"{DNS} example.com": {"rcode": 0, "answers": 1},
                f"{CLUSTER_DNS} {CLUSTER}": {"rcode": 3, "answers": 0},
            },
            "agents": {},
        }
        self.probed: list[ProbeRequest] = []
        self.probe_error: str | None = None
        self.mounts: list[str] = []
        self.stale: set[str] = set()
        self.routes: list[Taken] = []
        self.conn = self.world.connect("blue") if connect else None
        self.plugin_sockets()
        self.doctor = Doctor(
            self.docker,
            self.world.connector.config,
            self.world.connector.lookup,
            host_routes=lambda: list(self.routes),
            mounts=lambda: list(self.mounts),
            is_stale=lambda path: path in self.stale,
            probe=self._probe,
        )

    def plugin_sockets(self) -> None:
        """New managed plug-ins get their socket, answering, as dockerd's do."""
        for name, info in self.docker.plugins.items():
            if "Config" not in info:
                kind = "teleroute" if "teleroute" in name else "telemount"
                info["Config"] = {"Interface": {"Socket": SOCKETS[kind]}}
                path = f"/run/docker/plugins/{info['Id']}/{SOCKETS[kind]}"
                self.docker.legacy_sockets.add(path)

    def _probe(self, docker: Any, container: str, req: ProbeRequest) -> dict[str, Any]:
        self.probed.append(req)
        if self.probe_error is not None:
            raise doctorprobe.ProbeError(self.probe_error)
        return self.seen

    def run(self, name: str | None = None) -> dict[str, Finding]:
        self.plugin_sockets()
        self.findings = self.doctor.run(name)
        return {f.check: f for f in self.findings}


@pytest.fixture
def doc() -> Doc:
    return Doc()


def problems(found: dict[str, Finding]) -> dict[str, Finding]:
    return {k: f for k, f in found.items() if f.state != OK}


def test_healthy_connection_every_check_ok_in_order(doc: Doc) -> None:
    found = doc.run()
    assert problems(found) == {}
    assert exit_code(doc.findings) == 0
    assert [f.check for f in doc.findings] == [
        "dockerd",
        "plug-in teleroute",
        "plug-in telemount",
        "blue: daemon",
        "blue: control API",
        "blue: gRPC port",
        "blue: br-daemon",
        "blue: DNS",
        "blue: SFTP bridges",
        "blue: network",
        "blue: subnets",
        "leftovers",
        "telemount mounts",
    ]
    assert "managed, enabled, version latest, answering" in found["plug-in teleroute"].message
    # The probe asked for the gRPC port, the daemon's DNS and a cluster and a public name.
    assert doc.probed == [
        ProbeRequest(4039, ((DNS, CLUSTER), (DNS, "example.com"), (CLUSTER_DNS, CLUSTER)), ()),
    ]


def test_no_connection_still_checks_docker_plugins_and_mounts() -> None:
    doc = Doc(connect=False)
    found = doc.run()
    assert problems(found) == {}
    assert found["connections"].message.startswith("no connection")
    assert "not installed yet" in found["plug-in teleroute"].message


def test_dockerd_unreachable_fails_first_and_skips_the_rest(doc: Doc) -> None:
    doc.docker.version = None
    doc.docker.fail["api_version"] = cli_unavailable()
    found = doc.run()
    assert found["dockerd"].state == FAIL
    assert "docker context use" in (found["dockerd"].fix or "")
    assert found["connections"].state == SKIP
    assert "telemount mounts" in found
    assert exit_code(doc.findings) == 1


def cli_unavailable() -> Exception:
    from telenet.cli.dockerapi import DockerUnavailable

    return DockerUnavailable("Cannot connect to the Docker daemon at unix:///nowhere")


def test_disabled_plugin(doc: Doc) -> None:
    doc.docker.plugins["telenet/telemount:latest"]["Enabled"] = False
    found = problems(doc.run())
    assert list(found) == ["plug-in telemount"]
    assert found["plug-in telemount"].state == FAIL
    assert "disabled" in found["plug-in telemount"].message
    assert found["plug-in telemount"].fix == "docker plugin enable telenet/telemount:latest"


def test_managed_plugin_not_answering_on_its_socket(doc: Doc) -> None:
    info = doc.docker.plugins["telenet/teleroute:latest"]
    doc.docker.legacy_sockets.discard(f"/run/docker/plugins/{info['Id']}/teleroute.sock")
    found = problems(doc.run())
    assert list(found) == ["plug-in teleroute"]
    assert "nothing answers on /run/docker/plugins/" in found["plug-in teleroute"].message
    assert found["plug-in teleroute"].fix == (
        "docker plugin disable -f telenet/teleroute:latest && "
        "docker plugin enable telenet/teleroute:latest"
    )


def test_managed_plugin_of_an_engine_elsewhere_is_not_probed(doc: Doc) -> None:
    doc.docker.legacy_sockets.clear()
    doc.docker.here = False
    found = doc.run()
    assert found["plug-in teleroute"].state == OK
    assert found["plug-in teleroute"].message.endswith("version latest")


def legacy_world() -> Doc:
    doc = Doc(connect=False)
    doc.docker.legacy_sockets.update(
        {"/run/docker/plugins/teleroute.sock", "/run/docker/plugins/telemount.sock"}
    )
    doc.conn = doc.world.connect("blue")
    return doc


def test_legacy_plugins_answering() -> None:
    doc = legacy_world()
    found = doc.run()
    assert problems(found) == {}
    assert found["plug-in teleroute"].message == (
        "teleroute: legacy, answering on /run/docker/plugins/teleroute.sock"
    )


def test_legacy_plugin_whose_process_is_gone() -> None:
    doc = legacy_world()
    doc.docker.legacy_sockets.discard("/run/docker/plugins/telemount.sock")
    found = problems(doc.run())
    assert list(found) == ["plug-in telemount"]
    assert (
        "nothing answers on /run/docker/plugins/telemount.sock"
        in found["plug-in telemount"].message
    )
    assert (
        found["plug-in telemount"].fix
        == "start the plug-in again: twistd telemount (docs/telemount.md)"
    )


def test_managed_plugin_removed_while_in_use(doc: Doc) -> None:
    del doc.docker.plugins["telenet/teleroute:latest"]
    found = problems(doc.run())
    assert found["plug-in teleroute"].message == (
        "telenet/teleroute:latest: not installed, and blue uses it"
    )
    assert (found["plug-in teleroute"].fix or "").startswith("telenet quit --name blue")


def test_stopped_daemon(doc: Doc) -> None:
    doc.docker.kill("tp-blue", code=3)
    found = problems(doc.run())
    assert found["blue: daemon"].fix == "docker start tp-blue"
    assert "exit code 3" in found["blue: daemon"].message
    assert found["blue: rest"].state == SKIP
    # A stopped daemon is its connection's finding, not a leftover.
    assert "leftovers" not in found
    assert doc.probed == []


def test_control_api_not_answering(doc: Doc) -> None:
    doc.world.control.answering = False
    found = problems(doc.run())
    assert list(found) == ["blue: control API", "blue: DNS"]
    assert found["blue: control API"].fix == "docker restart tp-blue"
    assert "Connection refused" in found["blue: control API"].message
    # Without the status, the daemon's DNS address is unknown.
    assert found["blue: DNS"].state == FAIL


def test_grpc_port_and_br_daemon(doc: Doc) -> None:
    doc.seen["grpc"] = "[Errno 111] Connection refused"
    doc.seen["bridge"] = False
    found = problems(doc.run())
    assert list(found) == ["blue: gRPC port", "blue: br-daemon"]
    assert "port 4039 does not answer in tp-blue: [Errno 111]" in found["blue: gRPC port"].message
    assert found["blue: br-daemon"].message.startswith("br-daemon is missing in tp-blue")
    assert {f.fix for f in found.values()} == {"docker restart tp-blue"}


def test_probe_that_cannot_run(doc: Doc) -> None:
    doc.probe_error = "python3: not found"
    found = problems(doc.run())
    assert list(found) == ["blue: inside"]
    assert found["blue: inside"].message == "could not look inside tp-blue: python3: not found"


def test_dns_of_the_daemon_not_answering(doc: Doc) -> None:
    doc.seen["dns"][f"{DNS} {CLUSTER}"] = {"error": "timed out"}
    found = problems(doc.run())
    assert found["blue: DNS"].message == (
        f"the daemon's DNS at {DNS} does not answer {CLUSTER}: no answer (timed out)"
    )
    assert found["blue: DNS"].fix == "docker restart tp-blue"


def test_dns_cluster_server_down(doc: Doc) -> None:
    doc.seen["dns"][f"{CLUSTER_DNS} {CLUSTER}"] = {"error": "timed out"}
    doc.seen["dns"][f"{DNS} {CLUSTER}"] = {"rcode": 2, "answers": 0}
    found = problems(doc.run())
    assert found["blue: DNS"].message == (
        "the cluster's DNS server 10.0.0.10:53 does not answer the daemon: no answer (timed out)"
    )
    assert (found["blue: DNS"].fix or "").startswith("start the cluster's DNS server 10.0.0.10:53")


def test_dns_cluster_server_answering_an_error_code(doc: Doc) -> None:
    doc.seen["dns"][f"{CLUSTER_DNS} {CLUSTER}"] = {"rcode": 5, "answers": 0}
    found = problems(doc.run())
    assert found["blue: DNS"].message.endswith("does not answer the daemon: answered REFUSED")


def test_dns_public_name_is_only_a_warning(doc: Doc) -> None:
    doc.seen["dns"][f"{DNS} example.com"] = {"rcode": 2, "answers": 0}
    found = problems(doc.run())
    assert found["blue: DNS"].state == WARN
    assert exit_code(doc.findings) == 0


def test_bridge_whose_agent_does_not_answer(doc: Doc) -> None:
    doc.world.control.open_bridge("10.0.0.5:2222")
    doc.world.control.open_bridge("10.0.0.6:2222")
    doc.seen["agents"] = {"10.0.0.5:2222": None, "10.0.0.6:2222": "timed out"}
    found = doc.run()
    assert doc.probed[0].agents == ("10.0.0.5:2222", "10.0.0.6:2222")
    bridges = found["blue: SFTP bridges"]
    assert bridges.state == FAIL
    assert "its agent 10.0.0.6:2222 does not answer (timed out)" in bridges.message
    doc.seen["agents"]["10.0.0.6:2222"] = None
    assert doc.run()["blue: SFTP bridges"] == Finding(
        "blue: SFTP bridges", OK, "2 open, every agent answers"
    )


def test_network_removed(doc: Doc) -> None:
    network = doc.docker.network("blue")
    assert network is not None
    for container in list(network["Containers"]):
        doc.docker.disconnect("blue", container)
    doc.docker.remove_network("blue")
    found = problems(doc.run())
    assert list(found) == ["blue: network"]
    assert found["blue: network"].fix == "telenet connect --docker --name blue"


def test_routed_subnet_colliding_with_a_host_route(doc: Doc) -> None:
    doc.routes = [Taken("10.96.5.0/24", "the host's route 10.96.5.0/24 dev eth9")]
    found = problems(doc.run())
    assert found["blue: subnets"].message == (
        "the routed subnet 10.96.0.0/16 overlaps the host's route 10.96.5.0/24 dev eth9"
    )
    assert (found["blue: subnets"].fix or "").startswith("ip route del 10.96.5.0/24 dev eth9")
    doc.docker.here = False  # the host's routes are not the engine's
    doc.docker.legacy_sockets.clear()
    assert doc.run()["blue: subnets"].state == OK


def test_subnet_colliding_with_another_docker_network(doc: Doc) -> None:
    doc.docker.create_network("other", "bridge", {}, {}, "10.96.128.0/20", False)
    # Its bridge's own route is the network, reported once as a network.
    doc.routes = [Taken("10.96.128.0/20", "the host's route 10.96.128.0/20 dev br-1")]
    found = problems(doc.run())
    assert found["blue: subnets"].message == (
        "the routed subnet 10.96.0.0/16 overlaps Docker network other (10.96.128.0/20)"
    )


def test_the_daemons_own_vif_network_is_no_collision() -> None:
    doc = Doc(connect=False)
    doc.docker.create_network("cluster", "bridge", {}, {}, "10.96.0.0/16", False)
    doc.world.connect("blue", vif_network="cluster")
    assert problems(doc.run()) == {}


def test_leftover_network_of_a_daemon_that_is_gone(doc: Doc) -> None:
    assert doc.conn is not None
    doc.docker.containers_by_id.pop(doc.conn.container_id)
    found = problems(doc.run())
    assert list(found) == ["leftovers"]
    assert found["leftovers"].message == (
        "network blue is left from a connection whose daemon is gone"
    )
    assert found["leftovers"].fix == "telenet quit --name blue"


def test_stale_mounts(doc: Doc) -> None:
    doc.mounts = ["/mnt/volumes/a/2222", "/mnt/volumes/b/2222"]
    doc.stale = {"/mnt/volumes/b/2222"}
    found = problems(doc.run())
    assert found["telemount mounts"].message == (
        "/mnt/volumes/b/2222: transport endpoint is not connected (its FUSE helper is gone)"
    )
    assert found["telemount mounts"].fix == "umount -l /mnt/volumes/b/2222"


def test_stale_mounts_of_one_connection(doc: Doc) -> None:
    """With --name and a managed telemount, only the mounts under its propagated mount."""
    plugin = doc.docker.plugins["telenet/telemount:latest"]["Id"]
    mine = f"/var/lib/docker/plugins/{plugin}/propagated-mount/h/2222"
    doc.mounts = ["/var/lib/docker/plugins/other/propagated-mount/h/2222", mine]
    doc.stale = set(doc.mounts)
    found = problems(doc.run("blue"))
    assert found["telemount mounts"].fix == f"umount -l {mine}"
    assert len([f for f in doc.findings if f.check == "telemount mounts"]) == 1
    assert len([f for f in doc.doctor.run() if f.check == "telemount mounts"]) == 2


def test_name_limits_the_connection_checks(doc: Doc) -> None:
    doc.world.connect("green")
    checks = [f.check for f in doc.doctor.run("green")]
    assert "green: daemon" in checks and "blue: daemon" not in checks
    found = {f.check: f for f in doc.doctor.run("nothere")}
    assert found["connection nothere"].state == FAIL


# -- through main


@pytest.fixture
def in_main(doc: Doc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Doc:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TELENET_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TELENET_SYSTEM_CONFIG", str(tmp_path / "etc.yml"))
    monkeypatch.delenv("TELENET_CONNECTION", raising=False)
    monkeypatch.setattr(
        cli,
        "make_connector",
        lambda config, say: attrs.evolve(doc.world.connector, config=config, say=say),
    )
    monkeypatch.setattr(diagnose, "make_doctor", lambda connector: doc.doctor)
    return doc


def test_main_text_one_line_a_check_and_exit_code(
    in_main: Doc, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor"]) == 0, capsys.readouterr()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 13
    assert lines[0].startswith("OK    dockerd ")
    in_main.docker.plugins["telenet/telemount:latest"]["Enabled"] = False
    assert main(["doctor", "--name", "blue"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "telemount:latest" in x)
    assert line.startswith("FAIL  plug-in telemount")
    assert line.endswith("fix: docker plugin enable telenet/telemount:latest")


def test_main_json(in_main: Doc, capsys: pytest.CaptureFixture[str]) -> None:
    in_main.seen["bridge"] = False
    assert main(["doctor", "--output", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    failed = [c for c in data["checks"] if c["state"] == FAIL]
    assert failed == [
        {
            "check": "blue: br-daemon",
            "state": "fail",
            "message": "br-daemon is missing in tp-blue: workloads cannot reach the daemon",
            "fix": "docker restart tp-blue",
        }
    ]
    assert main(["--format", "json", "doctor"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_main_builds_a_real_doctor(monkeypatch: pytest.MonkeyPatch) -> None:
    w = World()
    doctor = diagnose.make_doctor(w.connector)
    assert doctor.docker is w.docker and doctor.lookup is w.connector.lookup


def test_labels_name_the_drivers(doc: Doc) -> None:
    assert doc.conn is not None
    assert doc.conn.label(LABEL_NETWORK_PLUGIN) == "telenet/teleroute:latest"
    assert doc.conn.label(LABEL_VOLUME_PLUGIN) == "telenet/telemount:latest"


# -- the probe program and the mount table, for real (no Docker)


@pytest.fixture
def dns_server() -> Iterator[tuple[str, list[bytes]]]:
    """A UDP server on 127.0.0.1 answering every query NXDOMAIN, but SERVFAIL for bad.test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    queries: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            try:
                data, peer = sock.recvfrom(512)
            except OSError:
                return
            queries.append(data)
            rcode = 2 if b"\x03bad\x04test" in data else 3
            sock.sendto(
                data[:2] + struct.pack(">HHHHH", 0x8180 | rcode, 1, 0, 0, 0) + data[12:], peer
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}", queries
    thread.join(5)
    sock.close()


def test_probe_program(dns_server: tuple[str, list[bytes]], tmp_path: Path) -> None:
    """The program docker exec runs, run here: ports, the bridge's absence, DNS answers."""
    address, queries = dns_server
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    request = {
        "grpc": listening.getsockname()[1],
        "bridge": "no-such-bridge-here",
        "queries": [[address, "a.cluster.local"], [address, "bad.test"]],
        "agents": [f"127.0.0.1:{dead_port}"],
        "timeout": 3,
    }
    done = subprocess.run(
        [sys.executable, "-c", doctorprobe.PROBE, json.dumps(request)],
        capture_output=True,
        timeout=30,
    )
    listening.close()
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["grpc"] is None
    assert answer["bridge"] is False
    assert answer["dns"] == {
        f"{address} a.cluster.local": {"rcode": 3, "answers": 0},
        f"{address} bad.test": {"rcode": 2, "answers": 0},
    }
    assert doctorprobe.dns_problem(answer["dns"][f"{address} a.cluster.local"]) is None
    assert doctorprobe.dns_problem(answer["dns"][f"{address} bad.test"]) == "answered SERVFAIL"
    assert doctorprobe.server_address("10.0.0.1") == "10.0.0.1:53"
    assert doctorprobe.server_address("fd00::1") == "[fd00::1]:53"
    assert doctorprobe.server_address("10.0.0.1:5353") == "10.0.0.1:5353"
    assert "refused" in answer["agents"][f"127.0.0.1:{dead_port}"].lower()
    assert len(queries) == 2


def test_daemon_probe_through_exec(doc: Doc) -> None:
    """daemon_probe runs PROBE in the container and reads its JSON, or says why not."""
    calls: list[list[str]] = []

    def handler(container: dict[str, Any], argv: list[str]) -> tuple[int, bytes, bytes]:
        calls.append(argv)
        return 0, b'{"grpc": null, "bridge": true, "dns": {}, "agents": {}}\n', b""

    doc.docker.exec_handler = handler
    req = ProbeRequest(4039)
    assert doctorprobe.daemon_probe(doc.docker, "tp-blue", req)["bridge"] is True
    assert calls[0][:3] == ["python3", "-c", doctorprobe.PROBE]
    assert json.loads(calls[0][3])["grpc"] == 4039
    doc.docker.exec_handler = lambda c, a: (1, b"", b"Traceback\nNameError: x\n")
    with pytest.raises(doctorprobe.ProbeError, match="NameError: x"):
        doctorprobe.daemon_probe(doc.docker, "tp-blue", req)
    doc.docker.exec_handler = lambda c, a: (0, b"not json", b"")
    with pytest.raises(doctorprobe.ProbeError, match="not JSON"):
        doctorprobe.daemon_probe(doc.docker, "tp-blue", req)
    doc.docker.kill("tp-blue")
    with pytest.raises(doctorprobe.ProbeError, match="not running"):
        doctorprobe.daemon_probe(doc.docker, "tp-blue", req)


def test_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "90 30 0:50 / /mnt/volumes/a\\040b/2222 rw - fuse.telemount telemount:a rw\n"
        "91 30 0:51 / /other rw shared:5 - fuse.sshfs x rw\n"
        "garbage\n"
    )
    assert doctorprobe.telemount_mounts(str(table)) == ["/mnt/volumes/a b/2222"]
    assert doctorprobe.telemount_mounts(str(tmp_path / "missing")) == []
    assert doctorprobe.stale(str(tmp_path)) is False
    assert doctorprobe.stale(os.path.join(str(tmp_path), "missing")) is False


# -- plug-in health in status


def test_status_shows_the_plugins_counters(doc: Doc, capsys: pytest.CaptureFixture[str]) -> None:
    from telenet.cli.status import format_status

    route = doc.docker.plugins["telenet/teleroute:latest"]["Id"]
    mount = doc.docker.plugins["telenet/telemount:latest"]["Id"]
    doc.world.health[f"/run/docker/plugins/{route}/teleroute.sock"] = {
        "Uptime": 12.4,
        "Networks": [{"Network": "abc", "Connected": True, "Reconnects": 2}],
        "Endpoints": 3,
    }
    doc.world.health[f"/run/docker/plugins/{mount}/telemount.sock"] = {
        "Volumes": 2,
        "Mounts": [{"Server": "10.0.0.5:22", "Connected": False}],
    }
    status = doc.world.connector.status("blue")
    assert status["plugins"][0]["health"]["Endpoints"] == 3
    text = format_status(status)
    assert (
        "network plug-in: telenet/teleroute:latest (managed, enabled); "
        "1 networks (1 linked, 2 reconnects), 3 endpoints, up 12 s"
    ) in text
    assert "(managed, enabled); 2 volumes, 1 mounts (0 connected)" in text
    doc.docker.plugins["telenet/telemount:latest"]["Enabled"] = False
    status = doc.world.connector.status("blue")
    assert status["plugins"][1]["health"] is None
    doc.docker.here = False
    status = doc.world.connector.status("blue")
    assert status["plugins"][0]["health"] == {
        "error": "the engine runs elsewhere: the plug-in's socket is not here"
    }
    assert "health: the engine runs elsewhere" in format_status(status)
