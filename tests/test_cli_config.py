"""The CLI's config.yml: defaults, Telepresence's keys, and errors that name the key's path."""

from __future__ import annotations

import os

import pytest

from telenet.cliconfig import Config, ConfigError, PluginConfig, go_arch, load_config, parse_config


def test_empty_file_gives_the_defaults() -> None:
    """An empty file (or one holding only comments) is the default configuration."""
    config = parse_config("# nothing\n")
    assert config == Config(path="config.yml")
    assert config.teleroute.name == "telenet/teleroute:latest"
    assert config.telemount.name == "telenet/telemount:latest"
    assert config.mount_completion_delay == 0.3
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
intercept: {mountCompletionDelay: 1s500ms, useFtp: false}
"""
    )
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


@pytest.mark.parametrize(
    "text, message",
    [
        ("docker:\n  telemount:\n    tagg: x\n", "unknown key docker.telemount.tagg"),
        ("images: {}\n", "unknown key images"),
        ("docker:\n  enableIPv4: 'yes please'\n", "docker.enableIPv4: expected true or false"),
        ("grpc:\n  teleroutePort: 70000\n", "grpc.teleroutePort: expected a port number"),
        ("grpc:\n  teleroutePort: true\n", "grpc.teleroutePort: expected a port number"),
        ("docker:\n  teleroute: [1, 2]\n", "docker.teleroute: expected a mapping, got a list"),
        ("docker:\n  teleroute:\n    tag: 5\n", "docker.teleroute.tag: expected a string, got int"),
        ("docker:\n  teleroute:\n    tag: ''\n", "docker.teleroute.tag must not be empty"),
        ("intercept:\n  mountCompletionDelay: soon\n",
         "intercept.mountCompletionDelay: expected a duration like 300ms"),
        ("intercept:\n  useFtp: true\n", "intercept.useFtp: FTP is not supported"),
        ("- a list\n", "the file: expected a mapping, got a list"),
    ],
)  # fmt: skip
def test_errors_name_the_key_path(text: str, message: str) -> None:
    """Unknown keys and wrong types are errors naming the file and the key's dotted path."""
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
