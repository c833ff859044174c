# -*- test-case-name: tests.test_dockercontext -*-
"""
Which Docker engine to talk to, chosen the way the ``docker`` CLI chooses it.

In order:

1. ``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY``, ``DOCKER_TLS`` and ``DOCKER_CERT_PATH``): the
   context is "default" and the endpoint is that host;
2. ``DOCKER_CONTEXT``;
3. ``currentContext`` in ``$DOCKER_CONFIG/config.json`` (``DOCKER_CONFIG`` defaults to
   ``~/.docker``): what ``docker context use`` writes, and what Docker Desktop on Linux,
   Colima, OrbStack and Rancher Desktop set;
4. otherwise the default endpoint, ``unix:///var/run/docker.sock``.

The context named "default" is the default endpoint (``DOCKER_HOST`` or the default socket).
Any other context is read from the docker CLI's context store: its metadata in
``$DOCKER_CONFIG/contexts/meta/<sha256 of the name>/meta.json`` (``Endpoints.docker.Host`` and
``Endpoints.docker.SkipTLSVerify``), its TLS material in
``$DOCKER_CONFIG/contexts/tls/<sha256 of the name>/docker/`` (``ca.pem``, ``cert.pem``,
``key.pem``, each optional).

This module is imported by every CLI command: standard library and attrs only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

DEFAULT_CONTEXT = "default"
DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_UNIX_SOCKET = "/var/run/docker.sock"
_DEFAULT_TCP_PORT = "2375"
_DEFAULT_TLS_HOST = "tcp://localhost:2376"

SOURCE_DOCKER_HOST = "DOCKER_HOST"
SOURCE_DOCKER_CONTEXT = "DOCKER_CONTEXT"
SOURCE_DEFAULT = "the default"

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


class DockerContextError(Exception):
    """The Docker context to use cannot be resolved; ``str()`` is one line saying why."""


@attrs.frozen
class DockerTLS:
    """TLS to the engine: the files to use (None: not given) and whether to verify its cert."""

    ca_cert: str | None
    client_cert: str | None
    client_key: str | None
    verify: bool


@attrs.frozen
class DockerEndpoint:
    """The engine chosen, and why."""

    context: str
    """The context's name; "default" when none is used (``DOCKER_HOST``, the default socket)."""
    host: str
    """The endpoint URL: ``unix:///var/run/docker.sock``, ``tcp://1.2.3.4:2376``, ``ssh://u@h``."""
    tls: DockerTLS | None
    """None: plain (always for unix:// and ssh:// endpoints)."""
    source: str
    """Where the choice came from, for messages: "DOCKER_HOST", "DOCKER_CONTEXT", "the current
    context of ~/.docker/config.json", "the default"."""
    local: bool
    """The engine is reached through a unix socket of this machine (it may still run in a VM
    behind it: ``SDKDocker`` asks the engine's name before it trusts a legacy socket here)."""

    def describe(self) -> str:
        """``unix:///run/colima.sock (context colima, from DOCKER_CONTEXT)``, for messages."""
        if self.source == SOURCE_DEFAULT:
            return f"{self.host} (context {self.context}, the default)"
        return f"{self.host} (context {self.context}, from {self.source})"


def config_dir_of(environ: Mapping[str, str]) -> str:
    """The docker CLI's configuration directory: ``$DOCKER_CONFIG``, else ``~/.docker``."""
    configured = environ.get("DOCKER_CONFIG")
    if configured:
        return configured
    return os.path.join(_home(environ), ".docker")


def context_dir_name(name: str) -> str:
    """The directory of a context in the store: the hex SHA-256 of its name."""
    import hashlib  # only with a context set: most runs use DOCKER_HOST or the default

    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def resolve(
    environ: Mapping[str, str] | None = None, config_dir: str | None = None
) -> DockerEndpoint:
    """The engine the ``docker`` CLI would use in this environment; DockerContextError if none."""
    env = os.environ if environ is None else environ
    directory = config_dir if config_dir is not None else config_dir_of(env)
    if env.get("DOCKER_HOST"):
        return _default_endpoint(env, directory, SOURCE_DOCKER_HOST)
    name = env.get("DOCKER_CONTEXT")
    source = SOURCE_DOCKER_CONTEXT
    if not name:
        name = _current_context(directory)
        source = f"the current context of {_shorten(os.path.join(directory, 'config.json'), env)}"
    if not name:
        return _default_endpoint(env, directory, SOURCE_DEFAULT)
    if name == DEFAULT_CONTEXT:
        return _default_endpoint(env, directory, source)
    return _stored_endpoint(name, source, directory)


# -- the default context


def _default_endpoint(env: Mapping[str, str], directory: str, source: str) -> DockerEndpoint:
    """DOCKER_HOST (or the default socket) with TLS from DOCKER_TLS_VERIFY/DOCKER_TLS."""
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    use_tls = verify or bool(env.get("DOCKER_TLS"))
    raw = (env.get("DOCKER_HOST") or "").strip()
    if raw:
        host = _parse_host(raw)
    else:
        host = _DEFAULT_TLS_HOST if use_tls else DEFAULT_HOST
    tls = None
    if use_tls and _takes_tls(host):
        tls = _env_tls(env, directory, verify, f"Docker at {host} (context default, from {source})")
    return DockerEndpoint(
        context=DEFAULT_CONTEXT, host=host, tls=tls, source=source, local=_is_local(host)
    )


def _env_tls(env: Mapping[str, str], directory: str, verify: bool, which: str) -> DockerTLS:
    cert_path = env.get("DOCKER_CERT_PATH") or directory
    where = "DOCKER_CERT_PATH" if env.get("DOCKER_CERT_PATH") else "the docker configuration"
    ca, cert, key = (os.path.join(cert_path, f) for f in (CA_FILE, CERT_FILE, KEY_FILE))
    if verify and not os.path.isfile(ca):
        raise DockerContextError(
            f"{which}: DOCKER_TLS_VERIFY is set but there is no {ca} ({where})"
        )
    has_cert, has_key = os.path.isfile(cert), os.path.isfile(key)
    if has_cert != has_key:
        present, missing = (cert, key) if has_cert else (key, cert)
        raise DockerContextError(f"{which}: {present} has no matching {missing} ({where})")
    return DockerTLS(
        ca_cert=ca if os.path.isfile(ca) else None,
        client_cert=cert if has_cert else None,
        client_key=key if has_key else None,
        verify=verify,
    )


def _parse_host(raw: str) -> str:
    """DOCKER_HOST as the docker CLI reads it (``opts.ParseHost``): defaults filled in."""
    proto, sep, rest = raw.partition("://")
    if not sep:
        rest = raw
        proto = "unix" if raw.startswith(("/", "./")) else "tcp"
    if proto == "tcp":
        return _parse_tcp(rest, raw)
    if proto == "unix":
        if "://" in rest:
            raise _bad_host(raw)
        return f"unix://{rest or DEFAULT_UNIX_SOCKET}"
    if proto in ("ssh", "fd", "npipe"):
        return raw
    raise _bad_host(raw)


def _parse_tcp(rest: str, raw: str) -> str:
    if not rest:
        return f"tcp://localhost:{_DEFAULT_TCP_PORT}"
    if "://" in rest:
        raise _bad_host(raw)
    parts = urlsplit("tcp://" + rest)
    netloc = parts.netloc.rpartition("@")[2]
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise _bad_host(raw)
        host, port = netloc[: end + 1], netloc[end + 1 :]
        if port and not port.startswith(":"):
            raise _bad_host(raw)
        port = port[1:]
    elif netloc.count(":") > 1:
        raise _bad_host(raw)
    else:
        host, _, port = netloc.partition(":")
    if port and not port.isdigit():
        raise _bad_host(raw)
    return f"tcp://{host or 'localhost'}:{port or _DEFAULT_TCP_PORT}{parts.path}"


def _bad_host(raw: str) -> DockerContextError:
    return DockerContextError(
        f"DOCKER_HOST={raw} is not a Docker endpoint (expected unix://PATH, tcp://HOST:PORT "
        "or ssh://[USER@]HOST)"
    )


# -- named contexts


def _current_context(directory: str) -> str | None:
    path = os.path.join(directory, "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DockerContextError(
            f"cannot read the docker CLI configuration {path}: {_reason(e)}"
        ) from None
    if not data.strip():
        # The docker CLI treats an empty file as an empty configuration.
        return None
    try:
        config = json.loads(data)
    except ValueError as e:
        raise DockerContextError(
            f"cannot read the docker CLI configuration {path}: not JSON ({e})"
        ) from None
    if not isinstance(config, dict):
        raise DockerContextError(
            f"cannot read the docker CLI configuration {path}: not a JSON object"
        )
    current = _field(config, "currentContext")
    if current is None:
        return None
    if not isinstance(current, str):
        raise DockerContextError(
            f"cannot read the docker CLI configuration {path}: currentContext is not a string"
        )
    return current or None


def _stored_endpoint(name: str, source: str, directory: str) -> DockerEndpoint:
    which = f'docker context "{name}" (from {source})'
    digest = context_dir_name(name)
    meta_path = os.path.join(directory, "contexts", "meta", digest, "meta.json")
    try:
        with open(meta_path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise DockerContextError(f"{which} does not exist; see docker context ls") from None
    except OSError as e:
        raise DockerContextError(f"{which}: cannot read {meta_path}: {_reason(e)}") from None
    try:
        meta = json.loads(data)
    except ValueError as e:
        raise DockerContextError(f"{which}: cannot read {meta_path}: not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DockerContextError(f"{which}: cannot read {meta_path}: not a JSON object")
    endpoints = _field(meta, "Endpoints")
    if endpoints is not None and not isinstance(endpoints, dict):
        raise DockerContextError(f"{which}: cannot read {meta_path}: Endpoints is not an object")
    docker = _field(endpoints or {}, "docker")
    if docker is None:
        raise DockerContextError(f"{which} has no docker endpoint (in {meta_path})")
    if not isinstance(docker, dict):
        raise DockerContextError(
            f"{which}: cannot read {meta_path}: Endpoints.docker is not an object"
        )
    host = _field(docker, "Host")
    skip_verify = _field(docker, "SkipTLSVerify")
    if host is not None and not isinstance(host, str):
        raise DockerContextError(
            f"{which}: cannot read {meta_path}: Endpoints.docker.Host is not a string"
        )
    if skip_verify is not None and not isinstance(skip_verify, bool):
        raise DockerContextError(
            f"{which}: cannot read {meta_path}: Endpoints.docker.SkipTLSVerify is not a boolean"
        )
    # A context without a host leaves the client at its built-in default.
    host = host or DEFAULT_HOST
    tls = None
    if _takes_tls(host):
        tls_dir = os.path.join(directory, "contexts", "tls", digest, "docker")
        tls = _stored_tls(tls_dir, bool(skip_verify))
    return DockerEndpoint(
        context=name,
        host=host,
        tls=tls,
        source=source,
        local=_is_local(host),
    )


def _stored_tls(tls_dir: str, skip_verify: bool) -> DockerTLS | None:
    """
    As the docker CLI: TLS when the context has TLS material (its ``docker`` directory) or
    skips verification; the client certificate only with both its files.
    """
    if not os.path.isdir(tls_dir) and not skip_verify:
        return None
    ca, cert, key = (os.path.join(tls_dir, f) for f in (CA_FILE, CERT_FILE, KEY_FILE))
    pair = os.path.isfile(cert) and os.path.isfile(key)
    return DockerTLS(
        ca_cert=ca if os.path.isfile(ca) else None,
        client_cert=cert if pair else None,
        client_key=key if pair else None,
        verify=not skip_verify,
    )


# -- helpers


def _field(obj: dict[str, Any], name: str) -> Any:
    """A JSON member the way Go decodes it: the exact name, else any case-folding of it."""
    if name in obj:
        return obj[name]
    folded = name.casefold()
    for key, value in obj.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return None


def _takes_tls(host: str) -> bool:
    """TLS applies to TCP endpoints, not to sockets or ssh (the docker CLI skips it there)."""
    return host.startswith("tcp://")


def _is_local(host: str) -> bool:
    return host.startswith("unix://")


def _home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def _shorten(path: str, env: Mapping[str, str]) -> str:
    home = _home(env).rstrip("/")
    if home and (path == home or path.startswith(home + "/")):
        return "~" + path[len(home) :]
    return path


def _reason(e: OSError) -> str:
    return e.strerror or str(e)
