"""
Where the daemon's live routes come from: the VIF's routes and the control API's
``PUT /subnets``, each reaching a ``WatchRoutes`` subscriber through the composed daemon.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from treq.testing import StubTreq

from telenet.core.netip import decode_network
from telenet.network.control import Bridges, ControlResource
from telenet.network.vif import RouteTable
from telenet.teleroute.proto import teleroute_pb2 as pb
from tests.helpers import result_of
from tests.test_daemon import Composed

N = ipaddress.ip_network


def watched(c: Composed) -> list[list[str]]:
    seen: list[list[str]] = []
    c.core().watch_routes(
        pb.WatchRoutesRequest(pid=1),
        lambda u: seen.append([str(decode_network(r)) for r in u.routes]),
    )
    return seen


def call(resource: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    stub: Any = StubTreq(resource)
    data = json.dumps(body).encode() if body is not None else None
    response = result_of(stub.request(method, "http://daemon" + path, data=data))
    return response.code, json.loads(result_of(response.content()))


def test_vif_route_changes_reach_the_watchers() -> None:
    c = Composed("--vif", "eth1", "--subnet", "10.96.0.0/12")
    seen = watched(c)
    c.child("vif-routes").table.update(frozenset({N("172.19.0.0/16")}))
    c.child("vif-routes").table.update(frozenset())
    assert seen == [["10.96.0.0/12"], ["10.96.0.0/12", "172.19.0.0/16"], ["10.96.0.0/12"]]


def test_put_subnets_reaches_the_watchers_and_status() -> None:
    c = Composed("--subnet", "10.96.0.0/12")
    seen = watched(c)
    site = c.child("control").factory
    code, body = call(site.resource, "PUT", "/subnets", {"subnets": ["10.200.0.0/16"]})
    assert code == 200, body
    assert body == {"subnets": ["10.200.0.0/16"], "routes": ["10.200.0.0/16"]}
    assert seen == [["10.96.0.0/12"], ["10.200.0.0/16"]]
    assert c.status()["routes"] == ["10.200.0.0/16"]


def test_subnets_api() -> None:
    """GET answers both sets; PUT replaces the static ones; bad bodies are 400s."""
    table = RouteTable([N("10.96.0.0/12")])
    table.update(frozenset({N("172.19.0.0/16")}))
    told: list[list[str]] = []
    table.subscribe(lambda routes: told.append([str(n) for n in routes]))
    resource = ControlResource(dict, Bridges(lambda h, p: None), subnets=table)  # type: ignore[arg-type,return-value]
    assert call(resource, "GET", "/subnets") == (
        200,
        {"subnets": ["10.96.0.0/12"], "routes": ["10.96.0.0/12", "172.19.0.0/16"]},
    )
    code, body = call(resource, "PUT", "/subnets", {"subnets": ["fd00:96::/108", "10.1.0.0/16"]})
    assert code == 200
    assert body["subnets"] == ["10.1.0.0/16", "fd00:96::/108"]
    assert told == [["10.1.0.0/16", "172.19.0.0/16", "fd00:96::/108"]]
    # The same again changes nothing.
    call(resource, "PUT", "/subnets", {"subnets": ["10.1.0.0/16", "fd00:96::/108"]})
    assert len(told) == 1
    for bad, message in (
        ({"subnets": ["10.1.0.1/16"]}, "bad subnet '10.1.0.1/16': 10.1.0.1/16 has host bits set"),
        ({"subnets": ["0.0.0.0/0"]}, "bad subnet '0.0.0.0/0': a default route is not routed"),
        ({"subnets": [7]}, "bad subnet 7: expected a CIDR string"),
        ({"subnet": []}, 'expected {"subnets": ["CIDR", ...]}'),
        ([], 'expected {"subnets": ["CIDR", ...]}'),
    ):
        assert call(resource, "PUT", "/subnets", bad) == (400, {"error": message})
    assert call(resource, "POST", "/subnets", {"subnets": []})[0] == 405
    assert len(told) == 1


def test_no_subnets_api_without_a_table() -> None:
    resource = ControlResource(dict, Bridges(lambda h, p: None))  # type: ignore[arg-type,return-value]
    assert call(resource, "GET", "/subnets")[0] == 404
