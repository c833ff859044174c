"""The Docker endpoint chosen as the docker CLI chooses it (telenet.cli.dockercontext), and
SDKDocker built from it. Temporary directories only: no daemon, no network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telenet.cli.dockerapi import DockerUnavailable, SDKDocker
from telenet.cli.dockercontext import (
    DEFAULT_HOST,
    DockerContextError,
    DockerEndpoint,
    DockerTLS,
    context_dir_name,
    resolve,
)


def store_context(
    config: Path,
    name: str,
    host: str | None = "unix:///run/colima.sock",
    skip_tls_verify: bool = False,
    tls_files: tuple[str, ...] = (),
    meta: Any = None,
) -> Path:
    """A context as ``docker context create`` stores it; its TLS directory."""
    digest = context_dir_name(name)
    meta_dir = config / "contexts" / "meta" / digest
    meta_dir.mkdir(parents=True)
    if meta is None:
        endpoint: dict[str, Any] = {"SkipTLSVerify": skip_tls_verify}
        if host is not None:
            endpoint["Host"] = host
        meta = {"Name": name, "Metadata": {"Description": name}, "Endpoints": {"docker": endpoint}}
    (meta_dir / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    tls_dir = config / "contexts" / "tls" / digest / "docker"
    if tls_files:
        tls_dir.mkdir(parents=True)
        for f in tls_files:
            (tls_dir / f).write_text(f"-----BEGIN {f}-----\n")
    return tls_dir


def use_context(config: Path, name: str) -> None:
    """``docker context use NAME``: currentContext in config.json."""
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.json").write_text(json.dumps({"auths": {}, "currentContext": name}))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def config(home: Path) -> Path:
    """~/.docker"""
    path = home / ".docker"
    path.mkdir(parents=True)
    return path


def env(home: Path, **kw: str) -> dict[str, str]:
    return {"HOME": str(home), "PATH": "/usr/bin:/bin", **kw}


# -- the rules and their order


def test_nothing_set_is_the_default(home: Path) -> None:
    """No DOCKER_HOST, DOCKER_CONTEXT or config.json: the default socket."""
    endpoint = resolve(env(home))
    assert endpoint == DockerEndpoint(
        context="default", host=DEFAULT_HOST, tls=None, source="the default", local=True
    )
    assert endpoint.host == "unix:///var/run/docker.sock"


def test_docker_host_wins(home: Path, config: Path) -> None:
    """DOCKER_HOST beats DOCKER_CONTEXT and the current context; the context is "default"."""
    store_context(config, "colima")
    store_context(config, "desktop-linux")
    use_context(config, "desktop-linux")
    endpoint = resolve(env(home, DOCKER_HOST="tcp://1.2.3.4:2376", DOCKER_CONTEXT="colima"))
    assert (endpoint.context, endpoint.host, endpoint.source) == (
        "default",
        "tcp://1.2.3.4:2376",
        "DOCKER_HOST",
    )
    assert endpoint.tls is None
    assert not endpoint.local


def test_docker_context_beats_current_context(home: Path, config: Path) -> None:
    store_context(config, "colima", "unix:///home/u/.colima/default/docker.sock")
    store_context(config, "desktop-linux", "unix:///home/u/.docker/desktop/docker.sock")
    use_context(config, "desktop-linux")
    endpoint = resolve(env(home, DOCKER_CONTEXT="colima"))
    assert endpoint == DockerEndpoint(
        context="colima",
        host="unix:///home/u/.colima/default/docker.sock",
        tls=None,
        source="DOCKER_CONTEXT",
        local=True,
    )


def test_current_context_of_config_json(home: Path, config: Path) -> None:
    """``docker context use``, as Docker Desktop on Linux does it."""
    store_context(config, "desktop-linux", "unix:///home/u/.docker/desktop/docker.sock")
    use_context(config, "desktop-linux")
    endpoint = resolve(env(home))
    assert endpoint.context == "desktop-linux"
    assert endpoint.host == "unix:///home/u/.docker/desktop/docker.sock"
    assert endpoint.source == "the current context of ~/.docker/config.json"


def test_empty_variables_are_unset(home: Path, config: Path) -> None:
    """As the docker CLI: an empty DOCKER_HOST or DOCKER_CONTEXT does not count."""
    store_context(config, "orbstack", "unix:///home/u/.orbstack/run/docker.sock")
    use_context(config, "orbstack")
    endpoint = resolve(env(home, DOCKER_HOST="", DOCKER_CONTEXT=""))
    assert (endpoint.context, endpoint.source) == (
        "orbstack",
        "the current context of ~/.docker/config.json",
    )


def test_docker_config_locates_config_and_store(home: Path, tmp_path: Path) -> None:
    """DOCKER_CONFIG moves both config.json and the context store."""
    elsewhere = tmp_path / "elsewhere"
    store_context(elsewhere, "rancher-desktop", "unix:///home/u/.rd/docker.sock")
    use_context(elsewhere, "rancher-desktop")
    endpoint = resolve(env(home, DOCKER_CONFIG=str(elsewhere)))
    assert endpoint.context == "rancher-desktop"
    assert endpoint.host == "unix:///home/u/.rd/docker.sock"
    assert endpoint.source == f"the current context of {elsewhere}/config.json"


def test_config_dir_argument(home: Path, tmp_path: Path) -> None:
    """resolve(config_dir=...) overrides DOCKER_CONFIG and ~/.docker."""
    other = tmp_path / "other"
    store_context(other, "colima")
    endpoint = resolve(
        env(home, DOCKER_CONTEXT="colima", DOCKER_CONFIG="/nonexistent"), config_dir=str(other)
    )
    assert endpoint.host == "unix:///run/colima.sock"


def test_default_context_is_the_default_endpoint(home: Path, config: Path) -> None:
    """The context "default" is never read from the store; it is DOCKER_HOST's or the socket."""
    store_context(config, "default", "tcp://never:2375")
    endpoint = resolve(env(home, DOCKER_CONTEXT="default"))
    assert (endpoint.context, endpoint.host, endpoint.source, endpoint.local) == (
        "default",
        DEFAULT_HOST,
        "DOCKER_CONTEXT",
        True,
    )
    use_context(config, "default")
    endpoint = resolve(env(home))
    assert (endpoint.context, endpoint.host) == ("default", DEFAULT_HOST)
    assert endpoint.source == "the current context of ~/.docker/config.json"


def test_empty_or_contextless_config_json(home: Path, config: Path) -> None:
    (config / "config.json").write_text("")
    assert resolve(env(home)).source == "the default"
    (config / "config.json").write_text('{"auths": {}, "currentContext": ""}')
    assert resolve(env(home)).source == "the default"


def test_context_directory_is_sha256_of_name() -> None:
    """As ``docker context inspect`` shows it (MetadataPath, TLSPath)."""
    assert context_dir_name("colima") == (
        "f24fd3749c1368328e2b149bec149cb6795619f244c5b584e844961215dadd16"
    )


def test_meta_json_keys_match_as_go_does(home: Path, config: Path) -> None:
    """Go's JSON decoding ignores case: a hand-written lower-case meta.json is read too."""
    docker = {"host": "ssh://me@box", "skipTLSVerify": False}
    store_context(config, "handmade", meta={"name": "handmade", "endpoints": {"docker": docker}})
    assert resolve(env(home, DOCKER_CONTEXT="handmade")).host == "ssh://me@box"


def test_context_without_host_is_the_default_socket(home: Path, config: Path) -> None:
    store_context(config, "bare", host=None)
    endpoint = resolve(env(home, DOCKER_CONTEXT="bare"))
    assert (endpoint.host, endpoint.local) == (DEFAULT_HOST, True)


# -- DOCKER_HOST as the docker CLI reads it


@pytest.mark.parametrize(
    ("given", "host"),
    [
        ("unix:///run/user/1000/docker.sock", "unix:///run/user/1000/docker.sock"),
        ("unix://", "unix:///var/run/docker.sock"),
        ("/run/podman/podman.sock", "unix:///run/podman/podman.sock"),
        ("tcp://1.2.3.4:2376", "tcp://1.2.3.4:2376"),
        ("tcp://1.2.3.4", "tcp://1.2.3.4:2375"),
        ("tcp://:2376", "tcp://localhost:2376"),
        ("tcp://", "tcp://localhost:2375"),
        ("1.2.3.4:2376", "tcp://1.2.3.4:2376"),
        ("docker.example", "tcp://docker.example:2375"),
        ("tcp://[::1]", "tcp://[::1]:2375"),
        ("tcp://[::1]:2376", "tcp://[::1]:2376"),
        ("ssh://user@host", "ssh://user@host"),
        ("  ssh://user@host:2222 ", "ssh://user@host:2222"),
    ],
)
def test_docker_host_defaults(home: Path, given: str, host: str) -> None:
    assert resolve(env(home, DOCKER_HOST=given)).host == host


@pytest.mark.parametrize("given", ["http2://x", "tcp://a:b", "unix://tcp://x", "tcp://::1:2"])
def test_docker_host_invalid(home: Path, given: str) -> None:
    with pytest.raises(DockerContextError, match=r"^DOCKER_HOST=.* is not a Docker endpoint"):
        resolve(env(home, DOCKER_HOST=given))


# -- TLS


def certs(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(f"-----BEGIN {name}-----\n")
    return directory


def test_docker_tls_verify_with_cert_path(home: Path, tmp_path: Path) -> None:
    """DOCKER_TLS_VERIFY (any non-empty value) and DOCKER_CERT_PATH's ca/cert/key.pem."""
    path = certs(tmp_path / "machine", "ca.pem", "cert.pem", "key.pem")
    endpoint = resolve(
        env(
            home,
            DOCKER_HOST="tcp://1.2.3.4:2376",
            DOCKER_TLS_VERIFY="1",
            DOCKER_CERT_PATH=str(path),
        )
    )
    assert endpoint.tls == DockerTLS(
        ca_cert=str(path / "ca.pem"),
        client_cert=str(path / "cert.pem"),
        client_key=str(path / "key.pem"),
        verify=True,
    )


def test_cert_path_defaults_to_docker_config(home: Path, config: Path) -> None:
    certs(config, "ca.pem")
    endpoint = resolve(env(home, DOCKER_HOST="tcp://1.2.3.4:2376", DOCKER_TLS_VERIFY="yes"))
    assert endpoint.tls == DockerTLS(str(config / "ca.pem"), None, None, verify=True)


def test_docker_tls_without_verify(home: Path, tmp_path: Path) -> None:
    """DOCKER_TLS alone: TLS, no verification, no CA needed."""
    path = certs(tmp_path / "c")
    endpoint = resolve(
        env(home, DOCKER_HOST="tcp://h:2376", DOCKER_TLS="1", DOCKER_CERT_PATH=str(path))
    )
    assert endpoint.tls == DockerTLS(None, None, None, verify=False)


def test_no_tls_variables_no_tls(home: Path, tmp_path: Path) -> None:
    path = certs(tmp_path / "c", "ca.pem", "cert.pem", "key.pem")
    endpoint = resolve(env(home, DOCKER_HOST="tcp://h:2376", DOCKER_CERT_PATH=str(path)))
    assert endpoint.tls is None


def test_tls_verify_without_host_is_the_tls_port(home: Path, config: Path) -> None:
    """As the docker CLI: --tlsverify without a host means tcp://localhost:2376."""
    certs(config, "ca.pem")
    endpoint = resolve(env(home, DOCKER_TLS_VERIFY="1"))
    assert (endpoint.host, endpoint.local) == ("tcp://localhost:2376", False)
    assert endpoint.tls is not None and endpoint.tls.verify


def test_tls_does_not_apply_to_sockets_or_ssh(home: Path, config: Path) -> None:
    certs(config, "ca.pem")
    for host in ("unix:///run/docker.sock", "ssh://u@h"):
        assert resolve(env(home, DOCKER_HOST=host, DOCKER_TLS_VERIFY="1")).tls is None


def test_tls_verify_without_ca_is_an_error(home: Path, tmp_path: Path) -> None:
    path = certs(tmp_path / "c")
    with pytest.raises(DockerContextError) as e:
        resolve(
            env(home, DOCKER_HOST="tcp://h:2376", DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(path))
        )
    assert str(e.value) == (
        f"Docker at tcp://h:2376 (context default, from DOCKER_HOST): DOCKER_TLS_VERIFY is set "
        f"but there is no {path}/ca.pem (DOCKER_CERT_PATH)"
    )


def test_cert_without_key_is_an_error(home: Path, tmp_path: Path) -> None:
    path = certs(tmp_path / "c", "ca.pem", "cert.pem")
    with pytest.raises(DockerContextError, match=r"cert\.pem has no matching .*key\.pem"):
        resolve(
            env(home, DOCKER_HOST="tcp://h:2376", DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(path))
        )


def test_context_tls_material(home: Path, config: Path) -> None:
    """ca/cert/key.pem under contexts/tls/<sha256>/docker/, verified unless SkipTLSVerify."""
    tls = store_context(
        config, "remote", "tcp://10.0.0.5:2376", tls_files=("ca.pem", "cert.pem", "key.pem")
    )
    assert str(tls) == os.path.join(config, "contexts", "tls", context_dir_name("remote"), "docker")
    endpoint = resolve(env(home, DOCKER_CONTEXT="remote"))
    assert endpoint.tls == DockerTLS(
        ca_cert=str(tls / "ca.pem"),
        client_cert=str(tls / "cert.pem"),
        client_key=str(tls / "key.pem"),
        verify=True,
    )
    assert not endpoint.local


def test_context_tls_each_file_optional(home: Path, config: Path) -> None:
    tls = store_context(config, "ca-only", "tcp://h:2376", tls_files=("ca.pem",))
    assert resolve(env(home, DOCKER_CONTEXT="ca-only")).tls == DockerTLS(
        str(tls / "ca.pem"), None, None, verify=True
    )
    # A certificate without its key is not used (the docker CLI needs both).
    store_context(config, "cert-only", "tcp://h:2376", tls_files=("cert.pem",))
    assert resolve(env(home, DOCKER_CONTEXT="cert-only")).tls == DockerTLS(
        None, None, None, verify=True
    )


def test_context_skip_tls_verify(home: Path, config: Path) -> None:
    store_context(config, "insecure", "tcp://h:2376", skip_tls_verify=True)
    assert resolve(env(home, DOCKER_CONTEXT="insecure")).tls == DockerTLS(
        None, None, None, verify=False
    )
    store_context(config, "plain", "tcp://h:2375")
    assert resolve(env(home, DOCKER_CONTEXT="plain")).tls is None


def test_context_tls_environment_ignored(home: Path, config: Path) -> None:
    """DOCKER_TLS_VERIFY/DOCKER_CERT_PATH are the default context's; a named one has its own."""
    store_context(config, "plain", "tcp://h:2375")
    endpoint = resolve(
        env(home, DOCKER_CONTEXT="plain", DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH="/nonexistent")
    )
    assert endpoint.tls is None


# -- local


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("unix:///var/run/docker.sock", True),
        ("unix:///home/u/.colima/default/docker.sock", True),
        ("tcp://127.0.0.1:2375", False),
        ("tcp://1.2.3.4:2376", False),
        ("ssh://user@host", False),
    ],
)
def test_local(home: Path, config: Path, host: str, local: bool) -> None:
    store_context(config, "ctx", host)
    assert resolve(env(home, DOCKER_CONTEXT="ctx")).local is local
    assert resolve(env(home, DOCKER_HOST=host)).local is local


# -- errors


def test_missing_context(home: Path, config: Path) -> None:
    with pytest.raises(DockerContextError) as e:
        resolve(env(home, DOCKER_CONTEXT="colima"))
    assert str(e.value) == (
        'docker context "colima" (from DOCKER_CONTEXT) does not exist; see docker context ls'
    )


def test_missing_current_context(home: Path, config: Path) -> None:
    use_context(config, "desktop-linux")
    with pytest.raises(DockerContextError) as e:
        resolve(env(home))
    assert str(e.value) == (
        'docker context "desktop-linux" (from the current context of ~/.docker/config.json) '
        "does not exist; see docker context ls"
    )


def test_malformed_meta_json(home: Path, config: Path) -> None:
    store_context(config, "broken", meta='{"Name": "broken", "Endpoints": ')
    meta = config / "contexts" / "meta" / context_dir_name("broken") / "meta.json"
    with pytest.raises(DockerContextError) as e:
        resolve(env(home, DOCKER_CONTEXT="broken"))
    message = str(e.value)
    assert message.startswith(f'docker context "broken" (from DOCKER_CONTEXT): cannot read {meta}:')
    assert "\n" not in message


@pytest.mark.parametrize(
    ("meta", "complaint"),
    [
        ("[]", "not a JSON object"),
        ('{"Endpoints": []}', "Endpoints is not an object"),
        ('{"Endpoints": {"docker": "x"}}', "Endpoints.docker is not an object"),
        ('{"Endpoints": {"docker": {"Host": 5}}}', "Endpoints.docker.Host is not a string"),
        ('{"Endpoints": {"docker": {"SkipTLSVerify": "no"}}}', "SkipTLSVerify is not a boolean"),
    ],
)
def test_meta_json_wrong_shape(home: Path, config: Path, meta: str, complaint: str) -> None:
    store_context(config, "odd", meta=meta)
    with pytest.raises(DockerContextError, match=complaint) as e:
        resolve(env(home, DOCKER_CONTEXT="odd"))
    assert "meta.json" in str(e.value) and 'docker context "odd"' in str(e.value)


def test_unreadable_meta_json(home: Path, config: Path) -> None:
    """A meta.json that cannot be opened (here: a directory) is named with the reason."""
    store_context(config, "locked", meta="{}")
    meta = config / "contexts" / "meta" / context_dir_name("locked") / "meta.json"
    meta.unlink()
    meta.mkdir()
    with pytest.raises(DockerContextError, match=rf"cannot read {meta}: Is a directory$"):
        resolve(env(home, DOCKER_CONTEXT="locked"))


def test_context_without_docker_endpoint(home: Path, config: Path) -> None:
    store_context(config, "k8s-only", meta={"Name": "k8s-only", "Endpoints": {"kubernetes": {}}})
    meta = config / "contexts" / "meta" / context_dir_name("k8s-only") / "meta.json"
    with pytest.raises(DockerContextError) as e:
        resolve(env(home, DOCKER_CONTEXT="k8s-only"))
    assert str(e.value) == (
        f'docker context "k8s-only" (from DOCKER_CONTEXT) has no docker endpoint (in {meta})'
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('{"currentContext": ', "not JSON"),
        ('["colima"]', "not a JSON object"),
        ('{"currentContext": 1}', "currentContext is not a string"),
    ],
)
def test_malformed_config_json(home: Path, config: Path, text: str, complaint: str) -> None:
    (config / "config.json").write_text(text)
    with pytest.raises(DockerContextError) as e:
        resolve(env(home))
    message = str(e.value)
    assert message.startswith(f"cannot read the docker CLI configuration {config}/config.json: ")
    assert complaint in message and "\n" not in message


def test_config_json_ignored_when_docker_host_or_context_set(home: Path, config: Path) -> None:
    """As the docker CLI: the current context is only read when nothing overrides it."""
    (config / "config.json").write_text("{not json")
    assert resolve(env(home, DOCKER_HOST="tcp://h:2375")).host == "tcp://h:2375"
    assert resolve(env(home, DOCKER_CONTEXT="default")).host == DEFAULT_HOST


def test_module_is_import_light() -> None:
    """The CLI imports it on every command: no docker-py (or requests) at import."""
    code = (
        "import sys, telenet.cli.dockercontext; "
        "sys.exit(any(m in sys.modules for m in ('docker', 'requests')))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- SDKDocker from an endpoint


class FakeFactory:
    """Stands in for docker.DockerClient: records how it was called, contacts nothing."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.client = object()

    def __call__(self, **kw: Any) -> Any:
        self.calls.append(kw)
        return self.client


def test_sdkdocker_unix_endpoint() -> None:
    endpoint = DockerEndpoint("colima", "unix:///run/colima.sock", None, "DOCKER_CONTEXT", True)
    factory = FakeFactory()
    docker = SDKDocker(endpoint=endpoint, client_factory=factory)
    assert docker.endpoint is endpoint
    assert factory.calls == []  # nothing until first use
    assert docker.client is factory.client
    assert docker.client is factory.client
    assert factory.calls == [
        {
            "base_url": "unix:///run/colima.sock",
            "tls": False,
            "version": "auto",
            "timeout": 120,
            "use_ssh_client": False,
        }
    ]


def test_sdkdocker_tls_endpoint(tmp_path: Path) -> None:
    path = certs(tmp_path / "tls", "ca.pem", "cert.pem", "key.pem")
    tls = DockerTLS(str(path / "ca.pem"), str(path / "cert.pem"), str(path / "key.pem"), True)
    endpoint = DockerEndpoint("remote", "tcp://10.0.0.5:2376", tls, "DOCKER_CONTEXT", False)
    factory = FakeFactory()
    assert SDKDocker(endpoint=endpoint, client_factory=factory).client is factory.client
    (call,) = factory.calls
    assert call["base_url"] == "tcp://10.0.0.5:2376"
    config = call["tls"]
    assert config.cert == (str(path / "cert.pem"), str(path / "key.pem"))
    assert (config.ca_cert, config.verify) == (str(path / "ca.pem"), True)
    assert call["use_ssh_client"] is False


def test_sdkdocker_tls_without_verify() -> None:
    tls = DockerTLS(None, None, None, verify=False)
    endpoint = DockerEndpoint("insecure", "tcp://h:2376", tls, "DOCKER_CONTEXT", False)
    factory = FakeFactory()
    assert SDKDocker(endpoint=endpoint, client_factory=factory).client is factory.client
    config = factory.calls[0]["tls"]
    assert (config.cert, config.ca_cert, config.verify) == (None, None, False)


def test_sdkdocker_bad_tls_material(tmp_path: Path) -> None:
    tls = DockerTLS(None, str(tmp_path / "gone.pem"), str(tmp_path / "gone-key.pem"), True)
    endpoint = DockerEndpoint("remote", "tcp://h:2376", tls, "DOCKER_CONTEXT", False)
    with pytest.raises(
        DockerUnavailable,
        match=r"^Docker at tcp://h:2376 \(context remote, "
        r"from DOCKER_CONTEXT\): unusable TLS material: ",
    ):
        _ = SDKDocker(endpoint=endpoint, client_factory=FakeFactory()).client


def test_sdkdocker_ssh_endpoint() -> None:
    endpoint = DockerEndpoint("box", "ssh://me@box", None, "DOCKER_CONTEXT", False)
    factory = FakeFactory()
    assert SDKDocker(endpoint=endpoint, client_factory=factory).client is factory.client
    assert factory.calls[0]["base_url"] == "ssh://me@box"
    assert factory.calls[0]["use_ssh_client"] is True
    assert factory.calls[0]["tls"] is False


def test_sdkdocker_resolves_at_first_use(
    home: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an endpoint: the docker CLI's choice in this process's environment."""
    store_context(config, "desktop-linux", "unix:///home/u/.docker/desktop/docker.sock")
    use_context(config, "desktop-linux")
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_TLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    factory = FakeFactory()
    docker = SDKDocker(client_factory=factory)
    assert docker.endpoint.context == "desktop-linux"
    assert docker.client is factory.client
    assert factory.calls[0]["base_url"] == "unix:///home/u/.docker/desktop/docker.sock"


def test_sdkdocker_bad_context_is_unavailable(
    home: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context that cannot be resolved: DockerUnavailable with the one-line reason."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("DOCKER_CONTEXT", "colima")
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    factory = FakeFactory()
    docker = SDKDocker(client_factory=factory)
    with pytest.raises(DockerContextError):
        _ = docker.endpoint
    with pytest.raises(DockerUnavailable) as e:
        docker.api_version()
    assert str(e.value) == (
        'docker context "colima" (from DOCKER_CONTEXT) does not exist; see docker context ls'
    )
    assert factory.calls == []


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short temporary directory (a unix socket path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tn-") as d:
        yield d


def test_unreachable_endpoint_one_line(short_tmp: str) -> None:
    """Nothing at the socket: one line naming the context and endpoint (real docker-py)."""
    path = os.path.join(short_tmp, "docker.sock")
    endpoint = DockerEndpoint("colima", f"unix://{path}", None, "DOCKER_CONTEXT", True)
    docker = SDKDocker(endpoint=endpoint)
    with pytest.raises(DockerUnavailable) as e:
        docker.api_version()
    assert str(e.value) == (
        f"Docker at unix://{path} (context colima, from DOCKER_CONTEXT) does not answer: "
        "No such file or directory"
    )
    assert e.value.endpoint is endpoint
    assert e.value.reason == "No such file or directory"


def test_refusing_socket_one_line(short_tmp: str) -> None:
    """A socket nobody accepts on: Connection refused, same shape."""
    path = os.path.join(short_tmp, "docker.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)  # bound, never listening
        endpoint = DockerEndpoint("default", f"unix://{path}", None, "the default", True)
        with pytest.raises(DockerUnavailable) as e:
            SDKDocker(endpoint=endpoint).api_version()
    assert str(e.value) == (
        f"Docker at unix://{path} (context default, the default) does not answer: "
        "Connection refused"
    )


def test_engine_gone_after_connecting() -> None:
    """A connection error on a later call names the endpoint the same way."""
    import requests

    class API:
        def version(self) -> Any:
            raise requests.exceptions.ConnectionError(
                "('Connection aborted.', ConnectionRefusedError(111, 'Connection refused'))"
            )

    class Client:
        api = API()

    endpoint = DockerEndpoint("default", "tcp://h:2375", None, "DOCKER_HOST", False)
    with pytest.raises(DockerUnavailable) as e:
        SDKDocker(client=Client(), endpoint=endpoint).api_version()
    assert str(e.value) == (
        "Docker at tcp://h:2375 (context default, from DOCKER_HOST) does not answer: "
        "Connection refused"
    )


class _Api:
    def __init__(self, name: str) -> None:
        self.name = name

    def info(self) -> dict[str, Any]:
        return {"Name": self.name}


class _Client:
    def __init__(self, name: str) -> None:
        self.api = _Api(name)


@pytest.mark.parametrize(
    "host, engine_name, here",
    [
        ("unix:///var/run/docker.sock", socket.gethostname(), True),
        ("unix:///home/u/.colima/default/docker.sock", "colima", False),  # a VM behind a socket
        ("tcp://10.0.0.5:2376", socket.gethostname(), False),
    ],
)
def test_legacy_sockets_here_serve_only_an_engine_here(
    tmp_path: Path, host: str, engine_name: str, here: bool
) -> None:
    """A legacy plug-in socket on this machine counts only for an engine running here."""
    sock = socket.socket(socket.AF_UNIX)
    path = str(tmp_path / "teleroute.sock")
    sock.bind(path)
    sock.listen(1)
    try:
        endpoint = DockerEndpoint("x", host, None, "DOCKER_CONTEXT", host.startswith("unix://"))
        docker = SDKDocker(client=_Client(engine_name), endpoint=endpoint)
        assert docker.socket_answers(path) is here
    finally:
        sock.close()
