"""The Docker plug-in HTTP layer: envelope, strict decoding, errors, limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import defer

from telenet.core import dockerplugin
from telenet.core.dockerplugin import BadRequest, PluginError, PluginResource, field, string_map

from .helpers import result_of


class Boom(Exception):
    pass


def make_stub() -> tuple[StubTreq, list[Any]]:
    seen: list[Any] = []

    def echo(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"Echo": body}

    async def slow(body: dict[str, Any]) -> dict[str, Any]:
        await defer.succeed(None)
        return {"Async": True}

    def refuse(body: dict[str, Any]) -> dict[str, Any]:
        raise PluginError("volume x is mounted by containers: [abc]")

    def crash(body: dict[str, Any]) -> dict[str, Any]:
        raise Boom("kaboom")

    def typed(body: dict[str, Any]) -> dict[str, Any]:
        return {"Name": field(body, "Name", str), "Opts": string_map(body, "Opts")}

    resource = PluginResource(
        ["VolumeDriver"],
        {
            "/T.Echo": echo,
            "/T.Async": slow,
            "/T.Refuse": refuse,
            "/T.Crash": crash,
            "/T.Typed": typed,
        },
    )
    return StubTreq(resource), seen


def post(stub: StubTreq, path: str, body: bytes = b"") -> tuple[int, Any, Any]:
    response = result_of(stub.post("http://plugin" + path, data=body))
    content = result_of(response.content())
    return response.code, json.loads(content), response.headers


def test_activate_names_the_driver() -> None:
    """/Plugin.Activate answers with the interfaces the plug-in implements."""
    stub, _ = make_stub()
    code, body, headers = post(stub, "/Plugin.Activate")
    assert (code, body) == (200, {"Implements": ["VolumeDriver"]})
    assert headers.getRawHeaders("content-type") == [dockerplugin.CONTENT_TYPE.decode()]


def test_handler_gets_decoded_body() -> None:
    """A JSON object body reaches the handler as a dict and the answer is JSON."""
    stub, seen = make_stub()
    code, body, _ = post(stub, "/T.Echo", b'{"Name": "v\\u00e9"}')
    assert (code, body) == (200, {"Echo": {"Name": "v\u00e9"}})
    assert seen == [{"Name": "v\u00e9"}]


def test_coroutine_handler() -> None:
    """Handlers may be coroutines."""
    stub, _ = make_stub()
    assert post(stub, "/T.Async", b"{}")[:2] == (200, {"Async": True})


def test_empty_body_is_empty_object() -> None:
    """Docker sends Content-Length: 0 for calls without arguments; that reads as {}."""
    stub, seen = make_stub()
    assert post(stub, "/T.Echo")[0] == 200
    assert seen == [{}]


def test_plugin_error_becomes_err() -> None:
    """A PluginError is answered 500 with its message, for the docker CLI to show."""
    stub, _ = make_stub()
    assert post(stub, "/T.Refuse", b"{}")[:2] == (
        500,
        {"Err": "volume x is mounted by containers: [abc]"},
    )


def test_unexpected_exception_is_err_and_server_lives() -> None:
    """A bug in a handler is an Err, never a traceback, and the next request is served."""
    stub, _ = make_stub()
    code, body, _ = post(stub, "/T.Crash", b"{}")
    assert code == 500
    assert body["Err"].startswith("internal error in /T.Crash")
    assert "Traceback" not in body["Err"]
    assert post(stub, "/T.Echo", b"{}")[0] == 200


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not a array"),
        (b'"x"', "must be a JSON object, not a string"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"a": NaN}', "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_malformed_bodies(raw: bytes, message: str) -> None:
    """Malformed bodies get a 400 Err that says what is wrong."""
    stub, seen = make_stub()
    code, body, _ = post(stub, "/T.Echo", raw)
    assert code == 400
    assert message in body["Err"]
    assert seen == []


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{}", "missing required field 'Name'"),
        (b'{"Name": 3}', "field 'Name' must be a string, not a number"),
        (b'{"Name": "a", "Opts": []}', "field 'Opts' must be a object, not a array"),
        (b'{"Name": "a", "Opts": {"k": 1}}', "Opts['k'] must be a string, not a number"),
    ],
)
def test_wrong_types(raw: bytes, message: str) -> None:
    """Wrong or missing fields are a 400 Err naming the field."""
    stub, _ = make_stub()
    code, body, _ = post(stub, "/T.Typed", raw)
    assert (code, body) == (400, {"Err": message})


def test_null_opts_is_empty() -> None:
    """Docker sends "Opts": null for a volume created without options."""
    stub, _ = make_stub()
    assert post(stub, "/T.Typed", b'{"Name": "a", "Opts": null}')[:2] == (
        200,
        {"Name": "a", "Opts": {}},
    )


def test_unknown_path() -> None:
    """An unknown endpoint is a 404 Err, not an HTML page."""
    stub, _ = make_stub()
    code, body, _ = post(stub, "/VolumeDriver.Nope", b"{}")
    assert code == 404
    assert body == {"Err": "unknown plug-in endpoint '/VolumeDriver.Nope'"}


def test_field_rejects_bool_as_number() -> None:
    """JSON true is not a number, although Python's bool is an int."""
    with pytest.raises(BadRequest, match="must be a number, not a boolean"):
        field({"n": True}, "n", int)


@pytest_twisted.ensureDeferred
async def test_oversized_body_over_a_real_socket(tmp_path: Any) -> None:
    """A body over the limit gets a 413 Err without being buffered, and the socket serves on."""
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.web.client import Agent

    stub_resource = PluginResource(["VolumeDriver"], {"/T.Echo": lambda body: {"ok": True}})
    path = str(tmp_path / "p.sock")
    port = await serverFromString(reactor, f"unix:{path}:mode=660").listen(
        dockerplugin.plugin_site(stub_resource)
    )
    try:
        agent = Agent.usingEndpointFactory(reactor, _Unix(reactor, path))
        client = HTTPClient(agent)
        big = b'{"x": "' + b"a" * (dockerplugin.MAX_BODY_BYTES + 10) + b'"}'
        response = await client.post("http://plugin/T.Echo", data=big)
        assert response.code == 413
        assert "larger than" in (await response.json())["Err"]
        response = await client.post("http://plugin/T.Echo", data=b"{}")
        assert (response.code, await response.json()) == (200, {"ok": True})
    finally:
        await port.stopListening()


class _Unix:
    def __init__(self, reactor: Any, path: str) -> None:
        self.reactor, self.path = reactor, path

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import UNIXClientEndpoint

        return UNIXClientEndpoint(self.reactor, self.path)
