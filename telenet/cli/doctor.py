# -*- test-case-name: tests.test_cli_doctor -*-
"""
``telenet doctor``: each common cause of failure checked in order, one finding each (ok, the
problem, and the command that fixes it), for docs/troubleshooting.md's symptoms.

The order follows the dependencies: dockerd, the two plug-ins, then per connection the daemon
container, its control API, its teleroute gRPC port and ``br-daemon``, the teleroute network,
subnet collisions, the daemon's DNS and the SFTP bridges' agents; then what an earlier
connection left behind, and stale telemount mounts on this machine. A check that cannot run
because an earlier one failed says ``skip``. Only reads: nothing here changes anything.

Every outside call goes through a seam (``IDocker``, ``ConnectionLookup``'s control API, the
probe in the daemon container, the host's routes and mount table), so the unit tests drive
every outcome with ``telenet.testing``'s fakes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import attrs

from telenet.cli.config import Config
from telenet.cli.connection import CLIError, Connection, NotConnected
from telenet.cli.daemoncontrol import DaemonControlError
from telenet.cli.dockerapi import DockerError, subnets_of
from telenet.cli.doctorprobe import (
    ProbeError,
    ProbeRequest,
    daemon_probe,
    dns_problem,
    server_address,
    stale,
    telemount_mounts,
)
from telenet.cli.info import plugin_version
from telenet.cli.interfaces import IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.naming import (
    DEFAULT_CLUSTER_DOMAIN,
    LABEL_CLUSTER_DOMAIN,
    LABEL_DAEMON,
    LABEL_NETWORK_PLUGIN,
    LABEL_VOLUME_PLUGIN,
    container_name,
    labels_of,
)
from telenet.cli.subnets import Taken, collision, host_routes

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"
#: The public name the daemon's DNS should resolve through its upstream servers.
PUBLIC_NAME = "example.com"
#: The plug-in kinds, as doctor names them, with the daemon label that names their driver.
KINDS = (("teleroute", LABEL_NETWORK_PLUGIN), ("telemount", LABEL_VOLUME_PLUGIN))


@attrs.frozen
class Finding:
    """One check's outcome: ``state`` is ok, fail, warn or skip; ``fix`` a command to run."""

    check: str
    state: str
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "state": self.state, "message": self.message, "fix": self.fix}


def describe_engine(docker: IDocker) -> str:
    """The engine's endpoint and context, as ``SDKDocker`` resolved them (a fake has none)."""
    try:
        endpoint = getattr(docker, "endpoint", None)
    except Exception as e:  # a context that does not resolve: the API call says more
        return f"no usable Docker context ({e})"
    return str(endpoint.describe()) if endpoint is not None else "the Docker engine"


@attrs.define
class Doctor:
    """I run the checks and return their findings, in order."""

    docker: IDocker
    config: Config
    lookup: ConnectionLookup
    host_routes: Callable[[], list[Taken]] = host_routes
    mounts: Callable[[], list[str]] = telemount_mounts
    is_stale: Callable[[str], bool] = stale
    probe: Callable[[IDocker, str, ProbeRequest], dict[str, Any]] = daemon_probe
    public_name: str = PUBLIC_NAME

    def run(self, name: str | None = None) -> list[Finding]:
        findings = [self.check_docker()]
        under = None
        if findings[0].state == FAIL:
            findings.append(Finding("connections", SKIP, "dockerd does not answer"))
        else:
            try:
                findings += self._connected(name)
                under = self._mounts_of(name) if name is not None else None
            except DockerError as e:
                findings.append(Finding("dockerd", FAIL, f"dockerd failed a call: {e}"))
        findings += self.check_mounts(under)
        return findings

    def _mounts_of(self, name: str) -> str | None:
        """Where a connection's managed telemount mounts (its propagated mount), if managed."""
        daemon = self.docker.container(container_name(name))
        driver = labels_of(daemon).get(LABEL_VOLUME_PLUGIN)
        info = self.docker.plugin(driver) if driver else None
        return f"/var/lib/docker/plugins/{info.get('Id')}/" if info else None

    def _connected(self, name: str | None) -> list[Finding]:
        findings: list[Finding] = []
        names = [name] if name is not None else self.lookup.connection_names()
        conns: list[Connection] = []
        for each in names:
            try:
                conns.append(self.lookup.find(each))
            except NotConnected as e:
                findings.append(
                    Finding(
                        f"connection {each}",
                        FAIL,
                        str(e),
                        f"telenet connect --docker --name {each}",
                    )
                )
        live = [c for c in conns if c.container is not None]
        findings += self.check_plugins(live)
        if not names:
            findings.append(Finding("connections", OK, "no connection (telenet connect --docker)"))
        for conn in live:
            findings += self.check_connection(conn)
        findings += self.check_leftovers(name)
        return findings

    # -- dockerd and the plug-ins

    def check_docker(self) -> Finding:
        engine = describe_engine(self.docker)
        try:
            self.lookup.check_docker()
            version = self.docker.api_version()
        except (CLIError, DockerError) as e:
            return Finding(
                "dockerd", FAIL, f"{e}", "start dockerd, or pick a context: docker context use NAME"
            )
        return Finding("dockerd", OK, f"API {version} at {engine}")

    def check_plugins(self, conns: list[Connection]) -> list[Finding]:
        findings = []
        for kind, label in KINDS:
            cfg = self.config.teleroute if kind == "teleroute" else self.config.telemount
            users: dict[str, list[str]] = {}
            for conn in conns:
                driver = conn.label(label)
                if driver:
                    users.setdefault(driver, []).append(conn.name)
            if not users:
                managed = self.docker.plugin(cfg.name) is not None
                users = {
                    cfg.name
                    if managed or not self._legacy_answers(cfg.repository)
                    else cfg.repository: []
                }
            for driver, names in users.items():
                findings.append(self.check_plugin(kind, driver, names))
        return findings

    def _legacy_answers(self, driver: str) -> bool:
        return self.docker.socket_answers(f"/run/docker/plugins/{driver}.sock")

    def check_plugin(self, kind: str, driver: str, users: list[str]) -> Finding:
        check = f"plug-in {kind}"
        info = self.docker.plugin(driver)
        if info is None:
            socket = f"/run/docker/plugins/{driver}.sock"
            if self.docker.socket_answers(socket):
                return Finding(check, OK, f"{driver}: legacy, answering on {socket}")
            if not users:
                return Finding(check, OK, f"{driver}: not installed yet (telenet connect makes it)")
            if self.docker.engine_is_here() and "/" not in driver:
                return Finding(
                    check,
                    FAIL,
                    f"{driver}: legacy, and nothing answers on {socket} (its process is gone)",
                    f"start the plug-in again: twistd {kind} (docs/{kind}.md)",
                )
            return Finding(
                check,
                FAIL,
                f"{driver}: not installed, and {', '.join(users)} uses it",
                f"telenet quit --name {users[0]}, then telenet connect --docker "
                "(it makes the plug-in)",
            )
        version = plugin_version(self.docker, kind, driver)["version"]
        if not info.get("Enabled"):
            return Finding(
                check,
                FAIL,
                f"{driver}: managed, version {version}, disabled",
                f"docker plugin enable {driver}",
            )
        if not self.docker.engine_is_here():
            return Finding(check, OK, f"{driver}: managed, enabled, version {version}")
        socket_name = ((info.get("Config") or {}).get("Interface") or {}).get("Socket") or ""
        path = f"/run/docker/plugins/{info.get('Id')}/{socket_name}"
        if not self.docker.socket_answers(path):
            return Finding(
                check,
                FAIL,
                f"{driver}: managed, enabled, version {version}, and nothing answers on {path}",
                f"docker plugin disable -f {driver} && docker plugin enable {driver}",
            )
        return Finding(check, OK, f"{driver}: managed, enabled, version {version}, answering")

    # -- one connection

    def check_connection(self, conn: Connection) -> list[Finding]:
        tp = container_name(conn.name)
        prefix = f"{conn.name}: "
        state = (conn.container or {}).get("State") or {}
        if not conn.running:
            code = state.get("ExitCode")
            return [
                Finding(
                    prefix + "daemon",
                    FAIL,
                    f"the daemon container {tp} is stopped (exit code {code}; docker logs {tp})",
                    f"docker start {tp}",
                ),
                Finding(prefix + "rest", SKIP, "the daemon is not running"),
            ]
        findings = [Finding(prefix + "daemon", OK, f"{tp} is running")]
        try:
            status = self.lookup.control(conn).status()
        except (DaemonControlError, CLIError) as e:
            findings.append(
                Finding(
                    prefix + "control API",
                    FAIL,
                    f"the control API of {tp} does not answer: {e}",
                    f"docker restart {tp}",
                )
            )
            status = {}
        else:
            findings.append(
                Finding(
                    prefix + "control API", OK, f"answers (daemon version {status.get('version')})"
                )
            )
        findings += self.check_inside(conn, status)
        findings.append(self.check_network(conn))
        findings.append(self.check_subnets(conn, status))
        return findings

    def check_inside(self, conn: Connection, status: dict[str, Any]) -> list[Finding]:
        """gRPC port, ``br-daemon``, DNS and the bridges' agents, as the daemon sees them."""
        tp = container_name(conn.name)
        prefix = f"{conn.name}: "
        dns = (status.get("dns") or {}).get("local_address")
        cluster_dns = (status.get("dns") or {}).get("cluster_dns")
        domain = conn.label(LABEL_CLUSTER_DOMAIN) or DEFAULT_CLUSTER_DOMAIN
        cluster_name = f"kubernetes.default.svc.{domain}"
        bridges = [b for b in status.get("bridges") or [] if isinstance(b, dict)]
        queries = [(dns, cluster_name), (dns, self.public_name)] if dns else []
        if cluster_dns:
            queries.append((server_address(str(cluster_dns)), cluster_name))
        req = ProbeRequest(
            grpc_port=self.config.teleroute_port,
            queries=tuple(queries),
            agents=tuple(str(b.get("agent")) for b in bridges),
        )
        try:
            seen = self.probe(self.docker, conn.container_id or tp, req)
        except ProbeError as e:
            return [
                Finding(
                    prefix + "inside",
                    FAIL,
                    f"could not look inside {tp}: {e}",
                    f"docker restart {tp}",
                )
            ]
        findings = []
        grpc = seen.get("grpc")
        port = self.config.teleroute_port
        findings.append(
            Finding(prefix + "gRPC port", OK, f"teleroute's port {port} answers")
            if grpc is None
            else Finding(
                prefix + "gRPC port",
                FAIL,
                f"teleroute's port {port} does not answer in {tp}: {grpc}",
                f"docker restart {tp}",
            )
        )
        findings.append(
            Finding(prefix + "br-daemon", OK, f"br-daemon is up in {tp}")
            if seen.get("bridge")
            else Finding(
                prefix + "br-daemon",
                FAIL,
                f"br-daemon is missing in {tp}: workloads cannot reach the daemon",
                f"docker restart {tp}",
            )
        )
        findings.append(self._dns(conn, dns, cluster_dns, cluster_name, seen.get("dns") or {}))
        findings.append(self._agents(conn, bridges, seen.get("agents") or {}))
        return findings

    def _dns(
        self,
        conn: Connection,
        dns: str | None,
        cluster_dns: str | None,
        name: str,
        seen: dict[str, Any],
    ) -> Finding:
        check = f"{conn.name}: DNS"
        tp = container_name(conn.name)
        if not dns:
            return Finding(
                check,
                FAIL,
                "the daemon's DNS listens nowhere (no teleroute address)",
                f"telenet connect --docker --name {conn.name}",
            )
        if cluster_dns:
            server = server_address(str(cluster_dns))
            direct = dns_problem(seen.get(f"{server} {name}"))
            if direct:
                return Finding(
                    check,
                    FAIL,
                    f"the cluster's DNS server {server} does not answer the daemon: {direct}",
                    f"start the cluster's DNS server {server} (or telenet quit --name "
                    f"{conn.name} and connect with the right --cluster-dns)",
                )
        cluster = dns_problem(seen.get(f"{dns} {name}"))
        if cluster:
            return Finding(
                check,
                FAIL,
                f"the daemon's DNS at {dns} does not answer {name}: {cluster}",
                f"docker restart {tp}",
            )
        public = dns_problem(seen.get(f"{dns} {self.public_name}"))
        if public:
            return Finding(
                check, WARN, f"{self.public_name}: {public} at {dns} (no upstream DNS from {tp}?)"
            )
        return Finding(check, OK, f"{dns} answers {name} and {self.public_name}")

    def _agents(
        self, conn: Connection, bridges: list[dict[str, Any]], seen: dict[str, Any]
    ) -> Finding:
        check = f"{conn.name}: SFTP bridges"
        if not bridges:
            return Finding(check, OK, "none open")
        for bridge in bridges:
            agent = str(bridge.get("agent"))
            why = seen.get(agent, "not probed")
            if why is not None:
                return Finding(
                    check,
                    FAIL,
                    f"the bridge on port {bridge.get('port')}: its agent {agent} "
                    f"does not answer ({why})",
                    f"start the agent at {agent} again, or end the engagement that uses it",
                )
        return Finding(check, OK, f"{len(bridges)} open, every agent answers")

    def check_network(self, conn: Connection) -> Finding:
        check = f"{conn.name}: network"
        net = conn.network
        fix = f"telenet connect --docker --name {conn.name}"
        if net is None:
            return Finding(check, FAIL, f"the teleroute network {conn.name} is missing", fix)
        if labels_of(net).get(LABEL_DAEMON) != conn.container_id or conn.container_id not in (
            net.get("Containers") or {}
        ):
            return Finding(check, FAIL, f"the network {conn.name} is not its running daemon's", fix)
        subnet = ", ".join(subnets_of(net)) or "?"
        return Finding(check, OK, f"{conn.name} ({subnet}, driver {net.get('Driver')})")

    def check_subnets(self, conn: Connection, status: dict[str, Any]) -> Finding:
        check = f"{conn.name}: subnets"
        attached = set(((conn.container or {}).get("NetworkSettings") or {}).get("Networks") or {})
        ours = [
            (s, f"the network {conn.name}'s subnet {s}") for s in subnets_of(conn.network or {})
        ]
        ours += [
            (r, f"the routed subnet {r}") for r in status.get("routes") or [] if isinstance(r, str)
        ]
        docker_subnets: set[str] = set()
        taken: list[Taken] = []
        for net in self.docker.networks():
            subnets = subnets_of(net)
            docker_subnets.update(str(ipaddress.ip_network(s, strict=False)) for s in subnets)
            name = net.get("Name")
            # The daemon's own networks (its VIF's subnet is routed on purpose) aside.
            if name == conn.name or (name in attached and name != "bridge"):
                continue
            taken += [Taken(s, f"Docker network {name} ({s})") for s in subnets]
        if self.docker.engine_is_here():
            # A Docker bridge network's own route is the network, already counted.
            taken += [t for t in self.host_routes() if t.subnet not in docker_subnets]
        for subnet, what in ours:
            try:
                mine = ipaddress.ip_network(subnet, strict=False)
            except ValueError:
                continue
            hit = collision(mine, taken)
            if hit is not None:
                return Finding(
                    check, FAIL, f"{what} overlaps {hit.what}", _collision_fix(hit, conn.name)
                )
        return Finding(check, OK, f"{len(ours)} subnets, no collision")

    # -- leftovers and mounts

    def check_leftovers(self, name: str | None) -> list[Finding]:
        findings = []
        for net in self.docker.networks():
            labels = labels_of(net)
            owner = labels.get(LABEL_DAEMON)
            if not owner or (name is not None and net.get("Name") != name):
                continue
            daemon = self.docker.container(owner)
            if daemon is not None:
                continue  # a stopped daemon is the connection's own finding
            findings.append(
                Finding(
                    "leftovers",
                    FAIL,
                    f"network {net.get('Name')} is left from a connection whose daemon is gone",
                    f"telenet quit --name {net.get('Name')}",
                )
            )
        return findings or [Finding("leftovers", OK, "no network without its daemon")]

    def check_mounts(self, under: str | None = None) -> list[Finding]:
        """Stale telemount mounts: all of this machine's, or those under ``under``."""
        mounts = [m for m in self.mounts() if under is None or m.startswith(under)]
        bad = [m for m in mounts if self.is_stale(m)]
        if not bad:
            return [Finding("telemount mounts", OK, f"{len(mounts)} here, none stale")]
        return [
            Finding(
                "telemount mounts",
                FAIL,
                f"{m}: transport endpoint is not connected (its FUSE helper is gone)",
                f"umount -l {m}",
            )
            for m in bad
        ]


def _collision_fix(hit: Taken, name: str) -> str:
    if hit.what.startswith("the host's route"):
        route = hit.what.removeprefix("the host's route ")
        return (
            f"ip route del {route} (or telenet quit --name {name} and connect with --docker-subnet)"
        )
    return f"telenet quit --name {name}, then connect with another --docker-subnet or --subnet"


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.state == FAIL for f in findings) else 0


def as_data(findings: list[Finding]) -> dict[str, Any]:
    return {"ok": exit_code(findings) == 0, "checks": [f.as_dict() for f in findings]}


def format_findings(data: dict[str, Any]) -> str:
    """One line a check: state, check, message, and ``fix: COMMAND`` for a problem."""
    checks = data["checks"]
    width = max((len(c["check"]) for c in checks), default=0)
    lines = []
    for c in checks:
        fix = f"  fix: {c['fix']}" if c.get("fix") else ""
        lines.append(f"{c['state'].upper():<4}  {c['check']:<{width}}  {c['message']}{fix}")
    return "\n".join(lines)
