"""
The helper control protocol's schema (``telenet.fuse.protocol``): the bytes on the wire stay
those of the dict literals it replaced, since a plug-in adopts helpers an earlier one started,
and a bad request is answered with the same text as before.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from telenet.fuse.protocol import (
    AddVolume,
    Done,
    ProtocolError,
    Refused,
    RemoveVolume,
    Request,
    Shutdown,
    Status,
    StatusReport,
    VolumeState,
    decode_request,
    encode,
    parse_line,
)

REPORT = StatusReport(
    pid=4242,
    host="127.0.0.1",
    port=2222,
    mountpoint="/mnt/x",
    connected=True,
    volumes={"data": VolumeState(path="/exp/app/data", ro=False)},
    since=1234.5,
)


@pytest.mark.parametrize(
    "request_, literal",
    [
        (
            AddVolume(name="v", path="/tel_app_exports/c", ro=True),
            {"op": "add", "name": "v", "path": "/tel_app_exports/c", "ro": True},
        ),
        (AddVolume(name="v", path="/x"), {"op": "add", "name": "v", "path": "/x", "ro": False}),
        (RemoveVolume(name="v"), {"op": "remove", "name": "v"}),
        (Status(), {"op": "status"}),
        (Shutdown(), {"op": "shutdown"}),
    ],
)
def test_requests_round_trip_with_the_old_bytes(request_: Request, literal: dict[str, Any]) -> None:
    """Each request encodes to the old literal's bytes, and decodes back to itself."""
    line = encode(request_)
    assert line == json.dumps(literal).encode()
    assert decode_request(parse_line(line)) == request_


def test_answers_encode_to_the_old_bytes() -> None:
    """The helper's answers are byte for byte what it wrote before."""
    assert encode(Done()) == b'{"ok": true}'
    assert encode(Refused("nope")) == b'{"ok": false, "error": "nope"}'
    assert (
        encode(REPORT)
        == json.dumps(
            {
                "ok": True,
                "pid": 4242,
                "host": "127.0.0.1",
                "port": 2222,
                "mountpoint": "/mnt/x",
                "connected": True,
                "volumes": {"data": {"path": "/exp/app/data", "ro": False}},
                "since": 1234.5,
            }
        ).encode()
    )


def test_an_old_helpers_status_line_decodes_and_re_encodes_unchanged() -> None:
    """A status line as a running helper of the previous version writes it (``since`` an int)."""
    line = (
        b'{"ok": true, "pid": 7, "host": "fd00::1", "port": 8022, "mountpoint": "/m/fd00__1/8022",'
        b' "connected": false, "volumes": {"a": {"path": "/tel_app_exports/c", "ro": true},'
        b' "b": {"path": "/", "ro": false}}, "since": 0}'
    )
    report = Status().answer_from_json(parse_line(line))
    assert isinstance(report, StatusReport)
    assert (report.pid, report.host, report.port, report.connected) == (7, "fd00::1", 8022, False)
    assert report.volumes["a"] == VolumeState(path="/tel_app_exports/c", ro=True)
    assert encode(report) == line


def test_answers_decode_per_request() -> None:
    """Each request reads its own answer; a failure is ``Refused`` whatever was asked."""
    assert AddVolume(name="v", path="/x").answer_from_json({"ok": True}) == Done()
    assert RemoveVolume(name="v").answer_from_json({"ok": True}) == Done()
    assert Shutdown().answer_from_json({"ok": True}) == Done()
    assert Status().answer_from_json(REPORT.to_json()) == REPORT
    for request in (AddVolume(name="v", path="/x"), Status()):
        assert request.answer_from_json({"ok": False, "error": "gone"}) == Refused("gone")


def test_an_ok_answer_may_carry_more() -> None:
    """Keys a reader does not know are ignored (stand-ins answer everything with a status)."""
    assert Shutdown().answer_from_json(REPORT.to_json()) == Done()
    assert Status().answer_from_json({**REPORT.to_json(), "later": 1}) == REPORT


@pytest.mark.parametrize(
    "answer, message",
    [
        ([], "an answer must be a JSON object"),
        ({}, '"ok" must be a boolean'),
        ({"ok": 1}, '"ok" must be a boolean'),
        ({"ok": False}, '"error" must be a string'),
        ({**REPORT.to_json(), "pid": "7"}, '"pid" must be an integer'),
        ({**REPORT.to_json(), "port": True}, '"port" must be an integer'),
        ({**REPORT.to_json(), "host": None}, '"host" must be a string'),
        ({**REPORT.to_json(), "connected": "yes"}, '"connected" must be a boolean'),
        ({**REPORT.to_json(), "since": "now"}, '"since" must be a number'),
        ({**REPORT.to_json(), "volumes": []}, '"volumes" must be a JSON object'),
        ({**REPORT.to_json(), "volumes": {"a": "/x"}}, "a volume must be a JSON object"),
        ({**REPORT.to_json(), "volumes": {"a": {"path": "/x"}}}, '"ro" must be a boolean'),
    ],
)
def test_bad_status_answers(answer: object, message: str) -> None:
    """An answer off the schema is a ``ProtocolError`` naming what is wrong."""
    with pytest.raises(ProtocolError) as caught:
        Status().answer_from_json(answer)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "request_, message",
    [
        # The texts the helper answered with before the schema: they must not change.
        ([], "a request must be a JSON object"),
        ("status", "a request must be a JSON object"),
        ({}, "unknown op None"),
        ({"op": "fly"}, "unknown op 'fly'"),
        ({"op": ["add"]}, "unknown op ['add']"),
        ({"op": "add", "path": "/x"}, '"name" must be a non-empty string'),
        ({"op": "add", "name": "", "path": "/x"}, '"name" must be a non-empty string'),
        ({"op": "add", "name": 3, "path": "/x"}, '"name" must be a non-empty string'),
        ({"op": "add", "name": "a/b", "path": "/x"}, "invalid volume name 'a/b'"),
        ({"op": "add", "name": ".", "path": "/x"}, "invalid volume name '.'"),
        ({"op": "add", "name": "..", "path": "/x"}, "invalid volume name '..'"),
        ({"op": "add", "name": "a\0", "path": "/x"}, "invalid volume name 'a\\x00'"),
        ({"op": "add", "name": "é" * 128, "path": "/x"}, f"invalid volume name {'é' * 128!r}"),
        ({"op": "add", "name": "a"}, '"path" must be an absolute path'),
        ({"op": "add", "name": "a", "path": "rel"}, '"path" must be an absolute path'),
        ({"op": "add", "name": "a", "path": "/x\0"}, '"path" must be an absolute path'),
        ({"op": "add", "name": "a", "path": 1}, '"path" must be an absolute path'),
        ({"op": "add", "name": "a", "path": "/x", "ro": "yes"}, '"ro" must be a boolean'),
        ({"op": "add", "name": "a", "path": "/x", "ro": 1}, '"ro" must be a boolean'),
        # The name is checked first, then the path, then ro.
        ({"op": "add", "name": "a/b", "path": "rel", "ro": 1}, "invalid volume name 'a/b'"),
        ({"op": "add", "name": "a", "path": "rel", "ro": 1}, '"path" must be an absolute path'),
        ({"op": "remove"}, '"name" must be a string'),
        ({"op": "remove", "name": 1}, '"name" must be a string'),
    ],
)
def test_bad_requests_keep_their_messages(request_: object, message: str) -> None:
    """Every validation error the helper answers keeps its text."""
    with pytest.raises(ProtocolError) as caught:
        decode_request(request_)
    assert str(caught.value) == message


def test_requests_the_helper_accepts() -> None:
    """What the helper took before it still takes: ro defaults to false, extra keys are
    ignored, a name of 255 bytes is allowed, and remove takes any string."""
    assert decode_request({"op": "add", "name": "a", "path": "/x"}) == AddVolume("a", "/x", False)
    assert decode_request({"op": "status", "extra": 1}) == Status()
    assert decode_request({"op": "add", "name": "n" * 255, "path": "//"}) == AddVolume(
        "n" * 255, "//"
    )
    assert decode_request({"op": "remove", "name": ""}) == RemoveVolume("")


def test_add_with_an_owner() -> None:
    """uid/gid/umask are sent only when set (an older helper reads the bytes it knew)."""
    add = AddVolume("v", "/x", True, uid=1000, gid=0, umask=0o22)
    assert add.to_json() == {
        "op": "add",
        "name": "v",
        "path": "/x",
        "ro": True,
        "uid": 1000,
        "gid": 0,
        "umask": 0o22,
    }
    assert decode_request(add.to_json()) == add
    assert "uid" not in AddVolume("v", "/x").to_json()
    for bad in ({"uid": -1}, {"gid": "0"}, {"umask": 0o1000}, {"uid": True}, {"gid": 1.5}):
        with pytest.raises(ProtocolError, match="must be an integer from 0 to"):
            decode_request({"op": "add", "name": "v", "path": "/x", **bad})


def test_malformed_lines() -> None:
    """A line that is not JSON is a ``ProtocolError`` starting as the helper's answer did."""
    with pytest.raises(ProtocolError) as caught:
        parse_line(b"not json")
    try:
        json.loads(b"not json")
    except ValueError as e:
        expected = f"malformed JSON: {e}"
    assert str(caught.value) == expected
