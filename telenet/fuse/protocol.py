"""
The control protocol between the volume plug-in and its mount helpers: one schema for both ends.

A helper (``telenet.fuse.helper``) serves a unix socket; the plug-in
(``telenet.volumes.mounter``) writes one JSON object per line and reads one answer line per
request, in order::

    {"op": "add", "name": N, "path": "/remote/dir", "ro": false}  → {"ok": true}
        (optional "uid", "gid", "umask": integers; absent shows the server's own)
    {"op": "remove", "name": N}                                   → {"ok": true}
    {"op": "status"}   → {"ok": true, "pid", "host", "port", "mountpoint", "connected",
                          "volumes": {N: {"path", "ro"}}, "since"}
    {"op": "shutdown"}                                            → {"ok": true}, then exit

and ``{"ok": false, "error": "..."}`` for any failure. The bytes are what ``json.dumps`` writes
for these dicts, keys in this order: helpers outlive the plug-in, so the next plug-in must
adopt one an earlier version started. Decoding validates what it reads and ignores keys it
does not know; ``ProtocolError``'s text is what the helper answers a bad request with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar

import attrs

__all__ = [
    "AddVolume",
    "Answer",
    "Done",
    "Message",
    "ProtocolError",
    "Refused",
    "RemoveVolume",
    "Request",
    "RequestFor",
    "Shutdown",
    "Status",
    "StatusReport",
    "VolumeState",
    "decode_request",
    "encode",
    "parse_line",
]

JSONObject: TypeAlias = dict[str, Any]


class ProtocolError(ValueError):
    """A message that breaks the protocol; the text says how (and is the helper's answer)."""


# -- answers


@attrs.frozen
class Done:
    """The request was carried out."""

    def to_json(self) -> JSONObject:
        return {"ok": True}


@attrs.frozen
class Refused:
    """The request failed or was invalid; ``error`` says why."""

    error: str

    def to_json(self) -> JSONObject:
        return {"ok": False, "error": self.error}


@attrs.frozen
class VolumeState:
    """One volume a helper serves: its remote directory, read-only or writable."""

    path: str
    ro: bool

    def to_json(self) -> JSONObject:
        return {"path": self.path, "ro": self.ro}

    @classmethod
    def from_json(cls, data: object) -> VolumeState:
        data = _object(data, "a volume")
        return cls(path=_get(data, "path", str), ro=_get(data, "ro", bool))


@attrs.frozen
class StatusReport:
    """A helper's answer to ``Status``. ``since``: when it last (dis)connected, Unix time."""

    pid: int
    host: str
    port: int
    mountpoint: str
    connected: bool
    volumes: Mapping[str, VolumeState]
    since: float
    #: Bytes the kernel read and wrote through the mount, and operations that failed with
    #: an I/O error (the server's or the connection's), since the helper started; None from
    #: a helper older than these counters.
    read_bytes: int | None = None
    written_bytes: int | None = None
    io_errors: int | None = None

    def to_json(self) -> JSONObject:
        return {
            "ok": True,
            "pid": self.pid,
            "host": self.host,
            "port": self.port,
            "mountpoint": self.mountpoint,
            "connected": self.connected,
            "volumes": {name: v.to_json() for name, v in self.volumes.items()},
            "since": self.since,
            **{
                key: value
                for key, value in (
                    ("read_bytes", self.read_bytes),
                    ("written_bytes", self.written_bytes),
                    ("io_errors", self.io_errors),
                )
                if value is not None
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusReport:
        volumes = _get(data, "volumes", dict)
        return cls(
            pid=_get(data, "pid", int),
            host=_get(data, "host", str),
            port=_get(data, "port", int),
            mountpoint=_get(data, "mountpoint", str),
            connected=_get(data, "connected", bool),
            volumes={str(n): VolumeState.from_json(v) for n, v in volumes.items()},
            # An int stays an int, so that the bytes re-encoded are the bytes read.
            since=_get(data, "since", (int, float)),
            # A helper from before the counters has none.
            read_bytes=_get(data, "read_bytes", int) if "read_bytes" in data else None,
            written_bytes=_get(data, "written_bytes", int) if "written_bytes" in data else None,
            io_errors=_get(data, "io_errors", int) if "io_errors" in data else None,
        )


Answer: TypeAlias = Done | Refused | StatusReport

_A_co = TypeVar("_A_co", covariant=True)


def _refused_or(data: object) -> Refused | Mapping[str, Any]:
    """The ``Refused`` in ``data``, or ``data`` itself when it says ``"ok": true``."""
    answer = _object(data, "an answer")
    if _get(answer, "ok", bool):
        return answer
    return Refused(_get(answer, "error", str))


def _done(data: object) -> Done | Refused:
    answer = _refused_or(data)
    # Extra keys in an "ok" answer are allowed: some stand-ins answer everything with a status.
    return answer if isinstance(answer, Refused) else Done()


# -- requests


@attrs.frozen
class AddVolume:
    """
    Show remote directory ``path`` as volume ``name`` (idempotent). ``uid``/``gid``/``umask``
    (None: not set) are the owner and mode mask every file shows.
    """

    op: ClassVar[str] = "add"
    name: str
    path: str
    ro: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None

    def to_json(self) -> JSONObject:
        data: JSONObject = {"op": self.op, "name": self.name, "path": self.path, "ro": self.ro}
        # Only when set: a helper of an earlier version reads the same bytes as before.
        for key in ("uid", "gid", "umask"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AddVolume:
        name, path, ro = data.get("name"), data.get("path"), data.get("ro", False)
        if not isinstance(name, str) or not name:
            raise ProtocolError('"name" must be a non-empty string')
        if "/" in name or "\0" in name or name in (".", "..") or len(name.encode()) > 255:
            raise ProtocolError(f"invalid volume name {name!r}")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ProtocolError('"path" must be an absolute path')
        if not isinstance(ro, bool):
            raise ProtocolError('"ro" must be a boolean')
        ids = {}
        for key, top in (("uid", 0xFFFFFFFE), ("gid", 0xFFFFFFFE), ("umask", 0o777)):
            value = data.get(key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top
            ):
                raise ProtocolError(f'"{key}" must be an integer from 0 to {top}')
            ids[key] = value
        return cls(name=name, path=path, ro=ro, **ids)

    @staticmethod
    def answer_from_json(data: object) -> Done | Refused:
        return _done(data)


@attrs.frozen
class RemoveVolume:
    """Withdraw volume ``name``; removing one the helper does not serve is no error."""

    op: ClassVar[str] = "remove"
    name: str

    def to_json(self) -> JSONObject:
        return {"op": self.op, "name": self.name}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoveVolume:
        name = data.get("name")
        if not isinstance(name, str):
            raise ProtocolError('"name" must be a string')
        return cls(name=name)

    @staticmethod
    def answer_from_json(data: object) -> Done | Refused:
        return _done(data)


@attrs.frozen
class Status:
    """Ask for the helper's ``StatusReport``."""

    op: ClassVar[str] = "status"

    def to_json(self) -> JSONObject:
        return {"op": self.op}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Status:
        return cls()

    @staticmethod
    def answer_from_json(data: object) -> StatusReport | Refused:
        answer = _refused_or(data)
        return answer if isinstance(answer, Refused) else StatusReport.from_json(answer)


@attrs.frozen
class Shutdown:
    """Unmount and exit, once this is answered."""

    op: ClassVar[str] = "shutdown"

    def to_json(self) -> JSONObject:
        return {"op": self.op}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Shutdown:
        return cls()

    @staticmethod
    def answer_from_json(data: object) -> Done | Refused:
        return _done(data)


Request: TypeAlias = AddVolume | RemoveVolume | Status | Shutdown

_REQUESTS: dict[str, type[Request]] = {
    kind.op: kind for kind in (AddVolume, RemoveVolume, Status, Shutdown)
}


class RequestFor(Protocol[_A_co]):
    """A request whose answer, when it is not ``Refused``, is an ``_A_co``."""

    def to_json(self) -> JSONObject: ...

    def answer_from_json(self, data: object) -> _A_co | Refused: ...


def decode_request(data: object) -> Request:
    """The request in a decoded JSON line; ``ProtocolError`` says what is wrong with it."""
    if not isinstance(data, dict):
        raise ProtocolError("a request must be a JSON object")
    op = data.get("op")
    kind = _REQUESTS.get(op) if isinstance(op, str) else None
    if kind is None:
        raise ProtocolError(f"unknown op {op!r}")
    return kind.from_json(data)


# -- lines


class Message(Protocol):
    """Any request or answer."""

    def to_json(self) -> JSONObject: ...


def encode(message: Message) -> bytes:
    """One line of the protocol, without its newline."""
    return json.dumps(message.to_json()).encode()


def parse_line(line: bytes) -> object:
    """The JSON value on one line; ``ProtocolError`` when it is not JSON."""
    try:
        return json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"malformed JSON: {e}") from None


def _object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return data


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``data[key]``, checked to be a ``kind`` (a bool is not a number here)."""
    value = data.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ProtocolError(f'"{key}" must be {_KIND_NAMES[kind]}')
    return value


_KIND_NAMES: dict[type | tuple[type, ...], str] = {
    bool: "a boolean",
    int: "an integer",
    (int, float): "a number",
    str: "a string",
    dict: "a JSON object",
}
