# -*- test-case-name: tests.test_cli_config -*-
"""
The CLI's configuration, read the way Telepresence reads its ``config.yml``.

Files, lowest priority first; per key, a later file's value wins over an earlier one's:

1. ``/etc/telenet/config.yml`` (``$TELENET_SYSTEM_CONFIG`` names another), machine-wide.
   Missing is fine; unreadable or invalid is an error naming it.
2. The user's ``~/.config/telenet/config.yml`` (``$XDG_CONFIG_HOME`` is honoured;
   ``$TELENET_CONFIG`` or ``telenet --config FILE`` names another, which must then exist).
   A user with no telenet file (none named, none at the default place) gets Telepresence's
   ``~/.config/telepresence/config.yml`` (same XDG rule) instead, for the keys telenet knows:
   that file is Telepresence's, so its other keys are ignored without a word.

Keys are Telepresence's (docs/cli.md lists those telenet reads), plus ``docker.daemonImage``,
``cluster.namespace`` (the namespace of ``connect``) and ``docker.curlImage``
(the image of ``telenet curl``; unset, ``telenet/curl`` then ``curlimages/curl`` are tried).
A key telenet knows with a value of the wrong type is an error naming the file and the key's path
(``docker.teleroute.tag``). Any other key is ignored: silently when Telepresence knows it
(L{TELEPRESENCE_KEYS}: one config.yml may serve both), otherwise with a one-line warning naming
the file and the path, so that a typo is never silently ignored.

Every value remembers where it came from: ``Config.sources`` maps each of L{KEYS} to
``"default"`` or the file's path, ``Config.files`` lists the files read, lowest priority first.

Plug-in names: with a registry, Telepresence's ``REGISTRY/NAMESPACE/REPOSITORY:ARCH-TAG`` (what
``docker plugin install`` fetches); without one, ``NAMESPACE/REPOSITORY:TAG``, a plug-in made
locally from the telenet image (``telenet/teleroute:latest`` by default).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from telenet.core.gocompat import is_namespace, parse_duration

DEFAULT_SOURCE = "default"
SYSTEM_CONFIG = "/etc/telenet/config.yml"

Warn = Callable[[str], None]


class ConfigError(Exception):
    """A configuration file is unreadable or invalid; the message says where."""


# The schema of the keys telenet uses: nested dicts of key -> type name ("str", "name" (a
# non-empty string), "bool", "duration", "port", "namespace" (a Kubernetes namespace name),
# "namespaces" (a list of them)).
_PLUGIN_KEYS = {
    "registryAPI": "str",
    "registry": "str",
    "namespace": "name",
    "repository": "name",
    "tag": "name",
}
SCHEMA: dict[str, Any] = {
    "cluster": {"namespace": "namespace", "mappedNamespaces": "namespaces"},
    "grpc": {"daemonPort": "port", "teleroutePort": "port"},
    "docker": {
        "daemonImage": "str",
        "curlImage": "str",
        "teleroute": _PLUGIN_KEYS,
        "telemount": _PLUGIN_KEYS,
        "enableIPv4": "bool",
        "enableIPv6": "bool",
        "subnet": "str",
    },
    "intercept": {"mountCompletionDelay": "duration", "mountTimeout": "duration", "useFtp": "bool"},
}


#: The keys whose value is one field of L{Config} (the plug-ins' keys fill a PluginConfig).
FIELDS: dict[str, str] = {
    "cluster.namespace": "namespace",
    "cluster.mappedNamespaces": "mapped_namespaces",
    "grpc.daemonPort": "daemon_port",
    "grpc.teleroutePort": "teleroute_port",
    "docker.daemonImage": "daemon_image",
    "docker.curlImage": "curl_image",
    "docker.enableIPv4": "enable_ipv4",
    "docker.enableIPv6": "enable_ipv6",
    "docker.subnet": "docker_subnet",
    "intercept.mountCompletionDelay": "mount_completion_delay",
    "intercept.mountTimeout": "mount_timeout",
}


def _leaf_paths(schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, kind in schema.items():
        path = f"{prefix}{key}"
        if isinstance(kind, dict):
            yield from _leaf_paths(kind, path + ".")
        else:
            yield path


#: The key paths telenet knows (``docker.teleroute.tag``), in the schema's order.
KEYS: tuple[str, ...] = tuple(_leaf_paths(SCHEMA))

#: Keys of Telepresence's config.yml (2.x up to the 2.2x releases) that telenet does not use,
#: accepted without a warning; a path accepts whatever is below it (``dns.mappings`` is a list,
#: ``intercept.telemount`` a mapping). From Telepresence's docs/reference/config.md and
#: pkg/client/config*.go; keys of older 2.x releases are kept, since files outlive the versions
#: that wrote them.
TELEPRESENCE_KEYS: frozenset[str] = frozenset(
    """
    cloud.refreshMessages cloud.skipLogin cloud.systemaHost cloud.systemaPort
    cluster.agentPortForward cluster.connectFromRootDaemon cluster.defaultManagerNamespace
    cluster.forceSPDY cluster.virtualIPSubnet
    connectionTTL
    daemons.userDaemonBinary
    dns.error dns.excludeSuffixes dns.excludes dns.includeSuffixes dns.localAddress
    dns.localAddresses dns.localIP dns.lookupTimeout dns.mappings dns.recursionCheck dns.remoteIP
    dns.useComplexLookup dns.vifAddress
    docker.addHostGateway docker.hostGateway
    grpc.maxReceiveSize grpc.pingInterval grpc.simulateDisconnect grpc.watchRetryInterval
    helm.chartURL
    images.agentImage images.clientImage images.registry images.webhookAgentImage
    images.webhookRegistry
    intercept.appProtocolStrategy intercept.defaultPort intercept.localShortcut
    intercept.localShortcutIsGlobal intercept.mountsRoot intercept.telemount
    logLevels.cli logLevels.kubeAuthDaemon logLevels.rootDaemon logLevels.userDaemon
    network.dnsWithFallback network.globalDNSSearchConfigStrategy
    nodeAgent.enabled
    routing.allowConflicting routing.allowConflictingSubnets routing.alsoProxy
    routing.alsoProxySubnets routing.autoResolveConflicts routing.neverProxy
    routing.neverProxySubnets routing.recursionBlockDuration routing.recursionBlockTreads
    routing.subnets routing.useTAP routing.virtualSubnet
    telepresenceAPI.port
    timeouts.agentInstall timeouts.apply timeouts.clusterConnect timeouts.connectivityCheck
    timeouts.containerShutdown timeouts.endpointDial timeouts.ftpReadWrite timeouts.ftpShutdown
    timeouts.helm timeouts.intercept timeouts.interceptEndpointDial timeouts.proxyDial
    timeouts.roundtripLatency timeouts.trafficAgentArrival timeouts.trafficAgentConnect
    timeouts.trafficManagerAPI timeouts.trafficManagerConnect
    usage.collectorAddress usage.enabled usage.insecure
    """.split()
)
# The mappings that hold Telepresence's keys ("timeouts", "intercept"): looked into, key by key.
_TELEPRESENCE_SECTIONS = frozenset(
    key[:dot] for key in TELEPRESENCE_KEYS for dot, c in enumerate(key) if c == "."
)


@attrs.frozen
class PluginConfig:
    """Where a plug-in comes from: ``docker.teleroute`` or ``docker.telemount``."""

    registry: str
    namespace: str
    repository: str
    tag: str
    registry_api: str = ""

    @property
    def name(self) -> str:
        """The plug-in's Docker name (see the module docstring)."""
        if self.registry:
            return f"{self.registry}/{self.namespace}/{self.repository}:{go_arch()}-{self.tag}"
        return f"{self.namespace}/{self.repository}:{self.tag}"

    @property
    def legacy_socket(self) -> str:
        """Where a legacy plug-in of this repository listens (its driver name is the same)."""
        return f"/run/docker/plugins/{self.repository}.sock"


def _all_default() -> dict[str, str]:
    return dict.fromkeys(KEYS, DEFAULT_SOURCE)


@attrs.frozen
class Config:
    """
    The CLI's configuration.

    ``path`` is the user's telenet file, if one was read. ``sources`` maps each of L{KEYS} to
    ``"default"`` or the path of the file its value came from; ``files`` are the files read,
    lowest priority first.
    """

    daemon_port: int = 4038
    teleroute_port: int = 4039
    daemon_image: str = "telenet"
    curl_image: str = ""
    teleroute: PluginConfig = PluginConfig("", "telenet", "teleroute", "latest")
    telemount: PluginConfig = PluginConfig("", "telenet", "telemount", "latest")
    enable_ipv4: bool = True
    enable_ipv6: bool = True
    #: The teleroute network's subnet (``--docker-subnet``'s default); empty: chosen freely.
    docker_subnet: str = ""
    mount_completion_delay: float = 0.3
    namespace: str = ""
    mapped_namespaces: tuple[str, ...] = ()
    #: How long an engagement waits for its agent to answer (probe and first mount).
    mount_timeout: float = 10.0
    path: str | None = None
    sources: Mapping[str, str] = attrs.field(factory=_all_default, hash=False)
    files: tuple[str, ...] = ()


def go_arch() -> str:
    """GOARCH of this machine, as Telepresence's plug-in tags spell it."""
    import platform  # a plug-in's tag only: docker-run and status never ask

    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def _user_config_dir() -> str:
    return os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")


def default_path() -> str:
    """The user's telenet file: ``$TELENET_CONFIG``, else under ``$XDG_CONFIG_HOME``."""
    explicit = os.environ.get("TELENET_CONFIG")
    if explicit:
        return explicit
    return os.path.join(_user_config_dir(), "telenet", "config.yml")


def default_system_path() -> str:
    """The machine-wide telenet file: ``$TELENET_SYSTEM_CONFIG``, else L{SYSTEM_CONFIG}."""
    return os.environ.get("TELENET_SYSTEM_CONFIG") or SYSTEM_CONFIG


def default_telepresence_path() -> str:
    """The user's Telepresence file, read when the user has no telenet file."""
    return os.path.join(_user_config_dir(), "telepresence", "config.yml")


def print_warning(message: str) -> None:
    """The CLI's way of warning: one line on stderr."""
    print(f"telenet: warning: {message}", file=sys.stderr, flush=True)


def _check(value: Any, kind: str, path: str) -> Any:
    if kind in ("str", "name"):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
        if kind == "name" and not value:
            raise ConfigError(f"{path} must not be empty")
        return value
    if kind == "namespace":
        if not isinstance(value, str) or not is_namespace(value):
            raise ConfigError(f"{path}: expected a namespace name, got {_describe(value)}")
        return value
    if kind == "namespaces":
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list of namespaces, got {_describe(value)}")
        return tuple(_check(item, "namespace", f"{path}[{i}]") for i, item in enumerate(value))
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if kind == "port":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise ConfigError(f"{path}: expected a port number (1-65535), got {_describe(value)}")
        return value
    if kind == "duration":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{path}: expected a duration like 300ms, got {_describe(value)}")
        try:
            seconds = parse_duration(str(value))
        except ValueError:
            raise ConfigError(
                f"{path}: expected a duration like 300ms, got {_describe(value)}"
            ) from None
        if seconds < 0:
            raise ConfigError(f"{path}: must not be negative")
        return seconds
    raise AssertionError(kind)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _walk(
    data: Any, schema: dict[str, Any], prefix: str, out: dict[str, Any], unknown: list[str]
) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'the file'}: expected a mapping, got {_describe(data)}")
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        kind = schema.get(key) if isinstance(key, str) else None
        if kind is None:
            _not_ours(value, path, unknown)
        elif isinstance(kind, dict):
            _walk(value, kind, path, out, unknown)
        else:
            out[path] = _check(value, kind, path)


def _not_ours(value: Any, path: str, unknown: list[str]) -> None:
    """Add to ``unknown`` the paths, at or under ``path``, that Telepresence does not know."""
    if path in TELEPRESENCE_KEYS:
        return
    if path in _TELEPRESENCE_SECTIONS:
        # Not a mapping: Telepresence's to refuse, telenet does not read it.
        if isinstance(value, dict):
            for key, item in value.items():
                _not_ours(item, f"{path}.{key}", unknown)
        return
    unknown.append(path)


def _parse_values(text: str, path: str, warn: Warn | None) -> dict[str, Any]:
    """
    The values of telenet's keys in one file, by key path; errors read ``PATH: KEY: what``.

    Unknown keys go to ``warn``, or nowhere when it is None (a file that is not telenet's).
    """
    from telenet.cli import plainyaml

    data = plainyaml.load(text)
    if data is plainyaml.DEFER:
        # Only for what the plain reader leaves: a run spares PyYAML's import otherwise.
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(e, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    values: dict[str, Any] = {}
    unknown: list[str] = []
    if data is not None:
        try:
            _walk(data, SCHEMA, "", values, unknown)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    if values.get("intercept.useFtp") and warn is None:
        # Telepresence's own file: FTP mounts are its choice outside Docker mode.
        del values["intercept.useFtp"]
    elif values.get("intercept.useFtp"):
        raise ConfigError(
            f"{path}: intercept.useFtp: FTP is not supported with Docker; remove the key or set "
            "it to false"
        )
    if warn is not None:
        for key in unknown:
            warn(f"{path}: unknown key {key} (ignored)")
    return values


def _merge(layers: list[tuple[str, dict[str, Any]]], path: str | None) -> Config:
    """The Config of files' values, lowest priority first, with each value's source."""
    values: dict[str, Any] = {}
    sources = _all_default()
    for file, layer in layers:
        values.update(layer)
        sources.update(dict.fromkeys(layer, file))
    default = Config()

    def plugin(kind: str, base: PluginConfig) -> PluginConfig:
        prefix = f"docker.{kind}."
        return PluginConfig(
            registry=values.get(prefix + "registry", base.registry),
            namespace=values.get(prefix + "namespace", base.namespace),
            repository=values.get(prefix + "repository", base.repository),
            tag=values.get(prefix + "tag", base.tag),
            registry_api=values.get(prefix + "registryAPI", base.registry_api),
        )

    simple = {field: values[key] for key, field in FIELDS.items() if key in values}
    return Config(
        **simple,
        teleroute=plugin("teleroute", default.teleroute),
        telemount=plugin("telemount", default.telemount),
        path=path,
        sources=sources,
        files=tuple(file for file, _ in layers),
    )


def parse_config(text: str, path: str = "config.yml", warn: Warn = print_warning) -> Config:
    """A Config from one telenet file's YAML text; errors read ``PATH: KEY: what is wrong``."""
    return _merge([(path, _parse_values(text, path, warn))], path)


def _read(path: str, *, required: bool) -> str | None:
    """The file's text; None if it does not exist and need not."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def load_config(
    path: str | None = None, *, system_path: str | None = None, warn: Warn = print_warning
) -> Config:
    """
    The configuration of the files the module docstring lists.

    ``path`` is ``--config`` (default: L{default_path}); ``system_path`` the machine-wide file
    (default: L{default_system_path}). Each unknown key is one call of ``warn``.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    system_path = system_path or default_system_path()
    text = _read(system_path, required=False)
    if text is not None:
        layers.append((system_path, _parse_values(text, system_path, warn)))
    explicit = path is not None or bool(os.environ.get("TELENET_CONFIG"))
    path = path or default_path()
    text = _read(path, required=explicit)
    if text is not None:
        layers.append((path, _parse_values(text, path, warn)))
        return _merge(layers, path)
    telepresence_path = default_telepresence_path()
    text = _read(telepresence_path, required=False)
    if text is not None:
        layers.append((telepresence_path, _parse_values(text, telepresence_path, None)))
    return _merge(layers, None)
