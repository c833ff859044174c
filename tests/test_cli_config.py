"""
The CLI's config.yml: defaults, Telepresence's keys, errors that name the key's path, warnings
for unknown keys, the system and Telepresence files, and where each value came from.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from telenet.cli.config import (
    KEYS,
    Config,
    ConfigError,
    PluginConfig,
    go_arch,
    load_config,
    parse_config,
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads this machine's /etc/telenet, ~/.config or $TELENET_CONFIG."""
    monkeypatch.delenv("TELENET_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TELENET_SYSTEM_CONFIG", str(tmp_path / "etc" / "config.yml"))


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_empty_file_gives_the_defaults() -> None:
    """An empty file (or one holding only comments) is the default configuration."""
    config = parse_config("# nothing\n")
    assert config == Config(path="config.yml", files=("config.yml",))
    assert config.teleroute.name == "telenet/teleroute:latest"
    assert config.telemount.name == "telenet/telemount:latest"
    assert config.mount_completion_delay == 0.3
    assert config.mount_timeout == 10
    assert (config.daemon_port, config.teleroute_port) == (4038, 4039)


def test_every_key() -> None:
    """Every key of the schema is read and converted (durations as Go durations)."""
    config = parse_config(
        """
grpc: {daemonPort: 5038, teleroutePort: 5039}
docker:
  daemonImage: my/telenet:1
  curlImage: my/curl:2
  teleroute: {registryAPI: ghcr.io/v2, registry: ghcr.io, namespace: telepresenceio,
              repository: teleroute, tag: 0.5.0}
  telemount: {namespace: me, repository: mount, tag: dev}
  enableIPv4: true
  enableIPv6: false
intercept: {mountCompletionDelay: 1s500ms, mountTimeout: 20s, useFtp: false}
cluster: {namespace: team-a, mappedNamespaces: [team-a, team-b]}
"""
    )
    assert config.namespace == "team-a" and config.mapped_namespaces == ("team-a", "team-b")
    assert config.daemon_port == 5038 and config.teleroute_port == 5039
    assert config.daemon_image == "my/telenet:1"
    assert config.curl_image == "my/curl:2"
    assert config.teleroute == PluginConfig(
        "ghcr.io", "telepresenceio", "teleroute", "0.5.0", "ghcr.io/v2"
    )
    assert config.teleroute.name == f"ghcr.io/telepresenceio/teleroute:{go_arch()}-0.5.0"
    assert config.telemount.name == "me/mount:dev"
    assert config.telemount.legacy_socket == "/run/docker/plugins/mount.sock"
    assert config.enable_ipv6 is False
    assert config.mount_completion_delay == 1.5
    assert config.mount_timeout == 20


@pytest.mark.parametrize(
    "text, message",
    [
        ("docker:\n  enableIPv4: 'yes please'\n", "docker.enableIPv4: expected true or false"),
        ("grpc:\n  teleroutePort: 70000\n", "grpc.teleroutePort: expected a port number"),
        ("grpc:\n  teleroutePort: true\n", "grpc.teleroutePort: expected a port number"),
        ("docker:\n  teleroute: [1, 2]\n", "docker.teleroute: expected a mapping, got a list"),
        ("docker:\n  teleroute:\n    tag: 5\n", "docker.teleroute.tag: expected a string, got int"),
        ("docker:\n  teleroute:\n    tag: ''\n", "docker.teleroute.tag must not be empty"),
        (
            "intercept:\n  mountCompletionDelay: soon\n",
            "intercept.mountCompletionDelay: expected a duration like 300ms",
        ),
        (
            "intercept:\n  mountTimeout: [1]\n",
            "intercept.mountTimeout: expected a duration like 300ms",
        ),
        ("intercept:\n  useFtp: true\n", "intercept.useFtp: FTP is not supported"),
        ("- a list\n", "the file: expected a mapping, got a list"),
        ("cluster:\n  namespace: Team_A\n", "cluster.namespace: expected a namespace name"),
        (
            "cluster:\n  mappedNamespaces: a,b\n",
            "cluster.mappedNamespaces: expected a list of namespaces",
        ),
        ("cluster:\n  mappedNamespaces: [a, 5]\n", "cluster.mappedNamespaces[1]: expected"),
        ("nonsense: 1\ngrpc:\n  daemonPort: x\n", "grpc.daemonPort: expected a port number"),
        ("timeouts: {agentInstall: 1m}\ndocker: 5\n", "docker: expected a mapping, got int"),
    ],
)
def test_errors_name_the_key_path(text: str, message: str) -> None:
    """Wrong types of telenet's keys are errors naming the file and the key's dotted path."""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "/etc/x.yml")
    assert str(e.value).startswith("/etc/x.yml: ")
    assert message in str(e.value)


def test_invalid_yaml_names_the_line() -> None:
    """A YAML syntax error says which line."""
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2\)"):
        parse_config("docker:\n  teleroute: {tag: x]\nintercept: {}\n")


def test_load_default_path_missing_is_fine(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file at the default place means the defaults; XDG_CONFIG_HOME is honoured."""
    monkeypatch.delenv("TELENET_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_config() == Config()
    os.makedirs(os.path.join(str(tmp_path), "telenet"))
    path = os.path.join(str(tmp_path), "telenet", "config.yml")
    with open(path, "w") as f:
        f.write("docker: {daemonImage: other}\n")
    assert load_config().daemon_image == "other"


def test_explicit_path_must_exist(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file named by --config or $TELENET_CONFIG that does not exist is an error."""
    missing = os.path.join(str(tmp_path), "nope.yml")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(missing)
    monkeypatch.setenv("TELENET_CONFIG", missing)
    with pytest.raises(ConfigError, match="nope.yml: no such file"):
        load_config()


def test_unknown_keys_warn_and_the_rest_applies() -> None:
    """Each key neither telenet nor Telepresence knows is one warning; the others still apply."""
    warnings: list[str] = []
    config = parse_config(
        """
docker:
  daemonImage: mine
  telemount: {tagg: x, tag: dev}
imagez: {registry: x}
timeouts: {agentInstal: 1m, clusterConnect: 30s}
intercept: {mountCompletionDelay: 1s, mountCompletionDealy: 2s}
""",
        "/home/u/.config/telenet/config.yml",
        warn=warnings.append,
    )
    assert warnings == [
        f"/home/u/.config/telenet/config.yml: unknown key {key} (ignored)"
        for key in (
            "docker.telemount.tagg",
            "imagez",
            "timeouts.agentInstal",
            "intercept.mountCompletionDealy",
        )
    ]
    assert config.daemon_image == "mine"
    assert config.telemount.tag == "dev"
    assert config.mount_completion_delay == 1.0


def test_the_default_warning_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a ``warn`` of the caller's, each warning is one line on stderr, nothing on stdout."""
    parse_config("grpc: {daemonPort: 5038, daemonPrt: 5038}\n", "/x/config.yml")
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "telenet: warning: /x/config.yml: unknown key grpc.daemonPrt (ignored)\n",
    )


# What a Telepresence 2.2x user's config.yml holds (key names from Telepresence's
# docs/reference/config.md), telenet's keys among the others.
TELEPRESENCE_CONFIG = """
timeouts:
  agentInstall: 2m
  clusterConnect: 30s
  intercept: 20
  trafficManagerConnect: 1m30s
  helm: 2m
logLevels:
  userDaemon: debug
  rootDaemon: info
images:
  registry: registry.example.com/telepresenceio
  agentImage: tel2:2.21.1
  clientImage: registry.example.com/telepresenceio/telepresence:2.21.1
  webhookRegistry: registry.example.com/telepresenceio
cluster:
  defaultManagerNamespace: ambassador
  mappedNamespaces: [default, staging]
  agentPortForward: true
grpc:
  maxReceiveSize: 10Mi
  daemonPort: 5038
  teleroutePort: 5039
intercept:
  defaultPort: 8080
  appProtocolStrategy: http2Probe
  useFtp: false
  mountsRoot: /tmp/telfs
  mountCompletionDelay: 500ms
docker:
  addHostGateway: true
  enableIPv6: false
  teleroute:
    registryAPI: ghcr.io/v2
    registry: ghcr.io
    namespace: telepresenceio
    repository: teleroute
    tag: 0.5.0
  telemount:
    registry: ghcr.io
    namespace: telepresenceio
    repository: telemount
    tag: 0.3.2
dns:
  includeSuffixes: [.private]
  excludeSuffixes: [.com, .io, .net, .org, .ru]
  lookupTimeout: 30s
  mappings:
    - name: postgres
      aliasFor: psql.big-data
routing:
  alsoProxySubnets: [10.0.5.0/24]
  neverProxySubnets: [10.0.0.0/16]
helm:
  chartURL: oci://ghcr.io/telepresenceio/telepresence-oss
"""


def _assert_telepresence_values(config: Config) -> None:
    """telenet's values of TELEPRESENCE_CONFIG."""
    assert (config.daemon_port, config.teleroute_port) == (5038, 5039)
    assert config.mount_completion_delay == 0.5
    assert (config.enable_ipv4, config.enable_ipv6) == (True, False)
    assert config.teleroute == PluginConfig(
        "ghcr.io", "telepresenceio", "teleroute", "0.5.0", "ghcr.io/v2"
    )
    assert config.telemount.name == f"ghcr.io/telepresenceio/telemount:{go_arch()}-0.3.2"
    assert config.daemon_image == "telenet"


def test_a_telepresence_config_loads_without_warnings() -> None:
    """Telepresence's keys are not typos: no error, no warning, and telenet's values apply."""
    warnings: list[str] = []
    config = parse_config(TELEPRESENCE_CONFIG, "/c.yml", warn=warnings.append)
    assert warnings == []
    _assert_telepresence_values(config)


@pytest.mark.parametrize(
    "text",
    [
        "images: {}\n",
        "images: {registry: docker.io/datawire, agentImage: tel2:2.21.1}\n",
        "timeouts: {agentInstall: 1m, trafficManagerAPI: 15s}\n",
        "logLevels: {userDaemon: trace, rootDaemon: warn, cli: info}\n",
        "docker: {addHostGateway: true, hostGateway: host.docker.internal}\n",
        "grpc: {maxReceiveSize: 10Mi}\n",
        "intercept: {defaultPort: 8080, telemount: {tag: 0.3.2}}\n",
        "cluster: {virtualIPSubnet: 246.246.0.0/16}\n",
        "dns: {mappings: [{name: a, aliasFor: b}], excludes: [redis]}\n",
        "telepresenceAPI: {port: 9980}\n",
        "helm: {chartURL: oci://example.com/chart}\n",
        "timeouts: 5\n",
    ],
)
def test_telepresence_keys_are_accepted_silently(text: str) -> None:
    """Keys Telepresence knows and telenet does not use change nothing and are not warned of."""
    warnings: list[str] = []
    assert parse_config(text, "/c.yml", warn=warnings.append) == parse_config("", "/c.yml")
    assert warnings == []


def test_system_file_is_merged_under_the_users(tmp_path: Path) -> None:
    """Per key, the user's value wins; the system file's apply where the user's file has none."""
    system = _write(
        tmp_path / "etc" / "config.yml",
        "docker:\n  teleroute: {registry: reg.example, tag: '1'}\n  daemonImage: site/telenet\n",
    )
    user = _write(
        tmp_path / "xdg" / "telenet" / "config.yml",
        "docker:\n  teleroute: {tag: '2'}\ngrpc: {daemonPort: 5038}\n",
    )
    config = load_config()
    assert config.teleroute == PluginConfig("reg.example", "telenet", "teleroute", "2")
    assert config.daemon_image == "site/telenet"
    assert config.daemon_port == 5038
    assert config.files == (system, user)
    assert config.path == user


def test_system_file_path_is_a_parameter_or_the_environment(tmp_path: Path) -> None:
    """``system_path`` beats $TELENET_SYSTEM_CONFIG; a missing system file is fine."""
    other = _write(tmp_path / "other.yml", "docker: {daemonImage: from-parameter}\n")
    _write(tmp_path / "etc" / "config.yml", "docker: {daemonImage: from-environment}\n")
    assert load_config(system_path=other).daemon_image == "from-parameter"
    assert load_config().daemon_image == "from-environment"
    assert load_config(system_path=str(tmp_path / "missing.yml")) == Config()


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "cannot read it: Is a directory"),
        ("grpc: [\n", "not valid YAML"),
        ("grpc: {daemonPort: many}\n", "grpc.daemonPort: expected a port number"),
    ],
)
def test_a_bad_system_file_is_an_error_naming_it(
    tmp_path: Path, text: str | None, message: str
) -> None:
    """An unreadable or invalid system file stops everything, and the error says which file."""
    system = tmp_path / "etc" / "config.yml"
    if text is None:
        system.mkdir(parents=True)
    else:
        _write(system, text)
    with pytest.raises(ConfigError) as e:
        load_config()
    assert str(e.value).startswith(f"{system}: ")
    assert message in str(e.value)


def test_unknown_keys_of_the_system_file_warn_naming_it(tmp_path: Path) -> None:
    """The system file is telenet's too: its typos are warned of, with its path."""
    system = _write(tmp_path / "etc" / "config.yml", "dockr: {daemonImage: x}\n")
    warnings: list[str] = []
    assert load_config(warn=warnings.append) == Config(files=(system,))
    assert warnings == [f"{system}: unknown key dockr (ignored)"]


def test_telepresence_file_when_there_is_no_telenet_file(tmp_path: Path) -> None:
    """Without a telenet file, Telepresence's is read for telenet's keys, its others unremarked."""
    telepresence = _write(
        tmp_path / "xdg" / "telepresence" / "config.yml",
        TELEPRESENCE_CONFIG + "someFutureKey: {x: 1}\ntimeouts2: {}\n",
    )
    warnings: list[str] = []
    config = load_config(warn=warnings.append)
    assert warnings == []
    _assert_telepresence_values(config)
    assert config.files == (telepresence,)
    assert config.path is None
    assert config.sources["grpc.daemonPort"] == telepresence
    assert config.sources["docker.daemonImage"] == "default"


def test_ftp_mounts_of_a_telepresence_file_are_its_own_business(tmp_path: Path) -> None:
    """intercept.useFtp: true is Telepresence's choice outside Docker mode: ignored there."""
    telepresence = _write(
        tmp_path / "xdg" / "telepresence" / "config.yml",
        "intercept: {useFtp: true, mountCompletionDelay: 1s}\n",
    )
    config = load_config()
    assert config.mount_completion_delay == 1.0
    assert config.sources["intercept.useFtp"] == "default"
    assert config.files == (telepresence,)


def test_telepresence_file_under_the_system_file_merge(tmp_path: Path) -> None:
    """In place of the user's telenet file, Telepresence's goes over the system file."""
    system = _write(
        tmp_path / "etc" / "config.yml", "grpc: {daemonPort: 6038, teleroutePort: 6039}\n"
    )
    telepresence = _write(
        tmp_path / "xdg" / "telepresence" / "config.yml", "grpc: {daemonPort: 7038}\n"
    )
    config = load_config()
    assert (config.daemon_port, config.teleroute_port) == (7038, 6039)
    assert config.files == (system, telepresence)


def test_telepresence_file_only_without_a_telenet_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A telenet file, even an empty one, or one named by --config or $TELENET_CONFIG wins."""
    _write(tmp_path / "xdg" / "telepresence" / "config.yml", "grpc: {daemonPort: 7038}\n")
    named = _write(tmp_path / "named.yml", "")
    assert load_config(named) == Config(path=named, files=(named,))
    monkeypatch.setenv("TELENET_CONFIG", named)
    assert load_config().daemon_port == 4038
    monkeypatch.delenv("TELENET_CONFIG")
    user = _write(tmp_path / "xdg" / "telenet" / "config.yml", "# nothing yet\n")
    assert load_config() == Config(path=user, files=(user,))


def test_telepresence_file_wrong_types_are_errors_naming_it(tmp_path: Path) -> None:
    """A key telenet knows with a wrong type, even in Telepresence's file, is an error."""
    telepresence = _write(
        tmp_path / "xdg" / "telepresence" / "config.yml",
        "bogus: 1\ndocker:\n  teleroute: {tag: 5}\n",
    )
    with pytest.raises(ConfigError) as e:
        load_config()
    assert str(e.value) == f"{telepresence}: docker.teleroute.tag: expected a string, got int 5"


def test_every_value_knows_its_source(tmp_path: Path) -> None:
    """``sources`` says, for each of telenet's keys, "default" or the file the value came from."""
    system = _write(
        tmp_path / "etc" / "config.yml",
        "grpc: {teleroutePort: 6039}\ndocker:\n  teleroute: {tag: site, registry: reg.example}\n",
    )
    user = _write(
        tmp_path / "xdg" / "telenet" / "config.yml",
        "docker:\n  teleroute: {tag: mine}\nintercept: {mountCompletionDelay: 1s}\n",
    )
    config = load_config()
    assert set(config.sources) == set(KEYS)
    assert {key: source for key, source in config.sources.items() if source != "default"} == {
        "grpc.teleroutePort": system,
        "docker.teleroute.registry": system,
        "docker.teleroute.tag": user,
        "intercept.mountCompletionDelay": user,
    }
    assert config.files == (system, user)
    assert Config().sources == dict.fromkeys(KEYS, "default")
