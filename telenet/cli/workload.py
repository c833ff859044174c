# -*- test-case-name: tests.test_cli_runner,tests.test_compose_render -*-
"""
What a workload of a connection gets, whoever makes it: ``telenet docker-run``, ``curl``,
``engage`` (``telenet.cli.runner``) and ``telenet compose`` (``telenet.cli.compose.render``).

- the connection's teleroute network (``teleroute_network``), which the workload joins;
- the daemon as DNS server, and the search domains of the connected namespace
  (``workload_dns``): ``docker create --dns``
  and a compose service's ``dns`` / ``dns_search`` come from the same value;
- for an engagement, one telemount volume per remote mount, of the connection's plug-in
  (``volume_driver``), with the options ``telemount_options`` spells (``host``, the daemon's
  ``bridge_host``; ``port``, ``container``, ``dir``, ``ro``, ``timeout``);
- an SFTP bridge opened to an agent, checked to answer, and closed (``open_bridge``,
  ``close_bridge``); an agent that does not answer yet (its pod is starting) is probed again
  for ``intercept.mountTimeout`` (``patient``), and so is the volume's first connection;
- the checks of an agent's address and an engaged container's name.

One module, so that a container of ``docker-run`` and a compose service of the same connection
resolve and mount alike.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence

import attrs

from telenet.cli.connection import CLIError, Connection
from telenet.cli.daemoncontrol import DaemonControlError
from telenet.cli.interfaces import IControl, IDocker
from telenet.cli.naming import (
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_NAMESPACE,
    LABEL_CLUSTER_DOMAIN,
    LABEL_NAMESPACE,
    LABEL_VOLUME_PLUGIN,
)
from telenet.core.volumeowner import OWNER_OPTIONS, parse_owner_options

#: Telepresence's search domain: ``<name>.tel2-search`` is ``<name>`` in the connected namespace.
TEL2_SEARCH = "tel2-search"


@attrs.frozen
class WorkloadDNS:
    """The DNS servers and search domains a workload of a connection is given."""

    servers: tuple[str, ...]
    search: tuple[str, ...] = ()

    def create_flags(self) -> list[str]:
        """The ``docker create`` flags: ``--dns S`` each, then ``--dns-search D`` each."""
        flags: list[str] = []
        for server in self.servers:
            flags += ["--dns", server]
        for domain in self.search:
            flags += ["--dns-search", domain]
        return flags


def workload_dns(conn: Connection) -> WorkloadDNS:
    """
    The daemon's address on its teleroute network, and the search domains of a pod of the
    connected namespace (``NS.svc.D``, ``svc.D``, ``D``, then Telepresence's ``tel2-search``),
    for docker-run and compose alike: a stub resolver then asks ``echo`` as
    ``echo.NS.svc.D`` first, which Docker's embedded DNS forwards to the daemon (it answers a
    single label itself on Docker 26, so the label alone would never reach the daemon).
    """
    address = conn.dns_ip()
    if not address:
        return WorkloadDNS(servers=())
    namespace = conn.label(LABEL_NAMESPACE) or DEFAULT_NAMESPACE
    domain = conn.label(LABEL_CLUSTER_DOMAIN) or DEFAULT_CLUSTER_DOMAIN
    search = (f"{namespace}.svc.{domain}", f"svc.{domain}", domain, TEL2_SEARCH)
    return WorkloadDNS(servers=(address,), search=search)


def teleroute_network(conn: Connection) -> str:
    """The Docker network a workload of the connection joins (it bears the connection's name)."""
    return conn.name


def volume_driver(conn: Connection, otherwise: Callable[[], str]) -> str:
    """The telemount plug-in the connection was made with (its label), else ``otherwise()``."""
    return conn.label(LABEL_VOLUME_PLUGIN) or otherwise()


def volume_wait(docker: IDocker, driver: str, mount_timeout: float) -> float:
    """
    The ``timeout`` to give ``driver``'s volumes: ``mount_timeout``, or 0 (no such option) for
    a managed plug-in that is not telenet's, such as Telepresence's Go telemount, which refuses
    options it does not know (``illegal option "timeout"``). Legacy plug-ins are telenet's.
    """
    found = docker.plugin(driver)
    config = (found or {}).get("Config") or {}
    description = config.get("Description")
    if description is not None and not str(description).startswith("telenet "):
        return 0.0
    return mount_timeout


def bridge_host(conn: Connection) -> str:
    """The daemon's address on Docker's default bridge: telemount's ``host`` for a bridge."""
    host = conn.bridge_ip()
    if host is None:
        raise CLIError(f"the daemon of {conn.name} has no bridge address")
    return host


def telemount_options(
    host: str,
    port: int,
    container: str,
    path: str,
    readonly: bool,
    owner: Mapping[str, str] | None = None,
    wait: float = 0.0,
) -> dict[str, str]:
    """
    A telemount volume's driver options for the directory ``path`` of the engaged ``container``,
    served through the bridge ``host:port`` (docs/telemount.md); ``ro`` only when read-only;
    ``owner``: the ``uid``/``gid``/``umask`` options (``mount_options``); ``timeout``, how long
    the first connection waits for the agent, when ``wait`` is set.
    """
    options = {"host": host, "port": str(port), "container": container, "dir": path}
    if readonly:
        options["ro"] = "true"
    options.update(owner or {})
    if wait > 0:
        options["timeout"] = f"{wait:g}s"
    return options


def mount_options(items: Sequence[str], what: str = "--mount-opt") -> dict[str, str]:
    """
    ``KEY=VALUE`` items (``uid``, ``gid``, ``umask``) for every telemount volume of an
    engagement, checked as the volume plug-in checks them; CLIError says what is wrong.
    """
    options: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise CLIError(f"{what} {item!r}: expected KEY=VALUE")
        if key not in OWNER_OPTIONS:
            raise CLIError(f"{what} {item!r}: the key must be one of {', '.join(OWNER_OPTIONS)}")
        options[key] = value
    try:
        parse_owner_options(options)
    except ValueError as e:
        raise CLIError(f"{what}: {e}") from None
    return options


def check_agent(agent: str, what: str = "--agent") -> None:
    """
    ``HOST:PORT`` with a port in 1-65535, an IPv6 host in brackets (``[fd00::5]:8022``, as the
    daemon's control API takes it); CLIError naming ``what`` otherwise.
    """
    host, sep, port = agent.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CLIError(f"{what} {agent!r}: expected HOST:PORT, e.g. 10.96.0.20:8022")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise CLIError(f"{what} {agent!r}: {host[1:-1]!r} is not an IPv6 address") from None
    elif ":" in host or "[" in host or "]" in host:
        raise CLIError(
            f"{what} {agent!r}: write an IPv6 agent as [ADDRESS]:PORT, e.g. [fd00::5]:8022"
        )


def check_container(container: str, what: str = "--container") -> None:
    """An engaged container's name: its export directory on the agent, so no ``/``."""
    if not container or "/" in container:
        raise CLIError(f"{what} {container!r} is not a container name")


#: Sends an SFTP INIT through the bridge ``host:port`` to ``agent``; CLIError when no agent
#: answers (``telenet.cli.runner.probe_agent``).
Probe = Callable[[str, int, str], None]


def probe_backoff(failures: int) -> float:
    """
    The delay before the next probe of an agent that does not answer yet: 0.25 s growing by
    1.6 to at most 2 s, as Twisted's ``backoffPolicy`` without jitter. Written out because
    importing ``twisted.application`` would cost every ``telenet docker-run`` 65 ms.
    """
    return min(0.25 * 1.6 ** min(failures, 8), 2.0)


PROBE_BACKOFF: Callable[[int], float] = probe_backoff


def patient(
    probe: Probe,
    wait: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    policy: Callable[[int], float] = PROBE_BACKOFF,
) -> Probe:
    """
    ``probe`` tried again while it fails, for ``wait`` seconds (the delays from ``policy``):
    an agent whose pod is still starting is waited for. Then its last error, saying how long.
    """

    def probing(host: str, port: int, agent: str) -> None:
        deadline = clock() + wait
        failures = 0
        while True:
            try:
                return probe(host, port, agent)
            except CLIError as e:
                failures += 1
                delay = policy(failures)
                if wait <= 0:
                    raise
                if clock() + delay > deadline:
                    raise CLIError(f"{e}, tried for {wait:g} s") from None
            sleep(delay)

    return probing


def open_bridge(control: IControl, agent: str, host: str, probe: Probe) -> int:
    """
    A bridge from the daemon to ``agent``, its port; the agent is probed through it, and the
    bridge closed again when it does not answer (CLIError with the agent's address).
    """
    try:
        port = control.open_bridge(agent)
    except DaemonControlError as e:
        raise CLIError(f"the daemon could not open a bridge to {agent}: {e}") from None
    try:
        probe(host, port, agent)
    except BaseException:
        close_bridge(control, port, lambda text: None)
        raise
    return port


def close_bridge(control: IControl, port: int, say: Callable[[str], None]) -> None:
    """The bridge on ``port`` closed; a warning said when the daemon could not."""
    try:
        control.close_bridge(port)
    except DaemonControlError as e:
        say(f"Warning: could not close the bridge on port {port}: {e}")
