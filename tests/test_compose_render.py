"""
The renderer: networks, dns, dns_search, telemount volumes (driver options, read-only rules,
shared volumes, local policy) and the project network's subnet, with the values docker-run
and engage use for the same connection.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs
import pytest

from telenet.cli.compose.command import dump
from telenet.cli.compose.extension import Extension
from telenet.cli.compose.extmerge import read_extension
from telenet.cli.compose.facts import FactsReader
from telenet.cli.compose.project import ComposeOptions, Project, load_project
from telenet.cli.compose.render import (
    BridgeFacts,
    ConnectionFacts,
    Facts,
    Rendered,
    render,
)
from telenet.cli.compose.source import ComposeError, parse_source
from telenet.cli.runflags import parse_run_args
from telenet.cli.runner import plan_create
from telenet.cli.workload import WorkloadDNS, telemount_options, workload_dns

from .test_cli_connect import World

SHOP = """\
name: shop
x-telenet:
  connections:
    - name: blue
      subnets: [10.96.0.0/12]
  mounts:
    - volume: pgdata
      policy: local
services:
  api:
    image: registry.example.com/shop/api:1.4
    environment:
      FEATURE_FLAGS: "yes"
    ports:
      - 8000:80
    dns: 1.1.1.1
    volumes:
      - uploads:/srv/uploads
      - ./config:/etc/shop:ro
      - /var/cache/shop
    x-telenet:
      type: engage
      agent: 10.96.0.20:8022
      container: api
      remoteMounts:
        - /srv/uploads
        - /etc/shop
        - /var/cache/shop
        - /var/run/secrets/kubernetes.io:ro
  worker:
    image: registry.example.com/shop/worker:1.4
    volumes:
      - uploads:/data/uploads:ro
    networks: [back]
    x-telenet:
      type: connect
  db:
    image: postgres:16
    volumes:
      - pgdata:/var/lib/postgresql/data
  admin:
    image: adminer
    profiles: [debug]
    x-telenet:
      type: connect
volumes:
  uploads:
  pgdata:
networks:
  back:
"""

BLUE = ConnectionFacts(
    name="blue",
    network="blue",
    dns=WorkloadDNS(servers=("172.16.0.2",)),
    routes=("10.96.0.0/12", "10.244.0.0/16"),
    volume_driver="telenet/telemount:latest",
)
API_BRIDGE = BridgeFacts(host="172.17.0.2", port=33000, agent="10.96.0.20:8022")
DOCKER_NETWORKS = {
    "bridge": ("172.17.0.0/16",),
    "blue": ("172.16.0.0/16",),
    "kind": ("172.18.0.0/16",),
}


def load(tmp_path: Path, text: str, profiles: tuple[str, ...] = ()) -> tuple[Project, Extension]:
    (tmp_path / "compose.yaml").write_text(text)
    project = load_project(ComposeOptions(profiles=profiles), str(tmp_path), {})
    return project, read_extension(project.documents, project.services(), lambda _: None)


def rendered(
    tmp_path: Path,
    text: str = SHOP,
    facts: Facts | None = None,
    profiles: tuple[str, ...] = (),
) -> Rendered:
    project, extension = load(tmp_path, text, profiles)
    facts = facts or Facts("shop", {"blue": BLUE}, {"api": API_BRIDGE}, DOCKER_NETWORKS)
    return render(project.model, extension, project.active_services(), facts)


def test_networks_and_dns(tmp_path: Path) -> None:
    """
    The teleroute network as an external network; each service of the connection joins it
    besides its own (default when it named none); the daemon comes first in dns.
    """
    doc = rendered(tmp_path).document
    assert doc["networks"]["telenet-blue"] == {"name": "blue", "external": True}
    api, worker, db = (doc["services"][s] for s in ("api", "worker", "db"))
    assert api["networks"] == {"default": None, "telenet-blue": None}
    assert api["dns"] == ["172.16.0.2", "1.1.1.1"]
    assert worker["networks"] == {"back": None, "telenet-blue": None}
    assert worker["dns"] == ["172.16.0.2"]
    # Services without the extension are left as they are.
    assert "networks" not in db and "dns" not in db
    # As docker-run: no search domain of telenet's own, so dns_search stays the user's.
    assert "dns_search" not in api


def test_dns_search_from_the_connection(tmp_path: Path) -> None:
    """Search domains of the connection's workload DNS come first, the user's after."""
    blue = ConnectionFacts(
        "blue", "blue", WorkloadDNS(("172.16.0.2",), ("shop.svc.cluster.local",)), BLUE.routes
    )
    text = SHOP.replace("    dns: 1.1.1.1\n", "    dns: 1.1.1.1\n    dns_search: corp.example\n")
    facts = Facts("shop", {"blue": blue}, {"api": API_BRIDGE}, DOCKER_NETWORKS)
    doc = rendered(tmp_path, text, facts).document
    assert doc["services"]["api"]["dns_search"] == ["shop.svc.cluster.local", "corp.example"]
    assert doc["services"]["worker"]["dns_search"] == ["shop.svc.cluster.local"]


def test_same_dns_and_network_as_docker_run() -> None:
    """The facts of a connection give compose the --dns and network docker-run uses."""
    world = World()
    world.connect("blue")
    conn = world.connector.find("blue")
    reader = FactsReader(world.docker, world.connector.config, world.connector.lookup)
    facts = reader.connected("blue").facts
    assert facts.dns == workload_dns(conn)
    assert facts.network == "blue" == conn.network["Name"]  # type: ignore[index]
    assert facts.routes == ("10.96.0.0/16",)
    plan = plan_create(parse_run_args(["busybox"]), workload_dns(conn))
    assert plan.create_args[:3] == ["create", "--dns", facts.dns.servers[0]]


def test_telemount_volumes_of_an_engaged_service(tmp_path: Path) -> None:
    """
    A named volume at a remote mount is replaced by telenet-<volume> in every service that
    mounts it; an anonymous one and a path with no volume get telenet-<service>-<i>; a bind
    mount stays (the user's local path wins, as -v does for engage).
    """
    result = rendered(tmp_path)
    doc = result.document
    volumes = doc["volumes"]
    assert volumes["telenet-uploads"] == {
        "driver": "telenet/telemount:latest",
        "driver_opts": telemount_options("172.17.0.2", 33000, "api", "/srv/uploads", False),
        "labels": {"telenet.cli.connection": "blue"},
    }
    assert volumes["telenet-uploads"]["driver_opts"] == {
        "host": "172.17.0.2",
        "port": "33000",
        "container": "api",
        "dir": "/srv/uploads",
    }
    assert volumes["telenet-api-2"]["driver_opts"]["dir"] == "/var/cache/shop"
    assert volumes["telenet-api-3"]["driver_opts"] == {
        "host": "172.17.0.2",
        "port": "33000",
        "container": "api",
        "dir": "/var/run/secrets/kubernetes.io",
        "ro": "true",
    }
    # The user's own volumes are still declared, untouched.
    assert volumes["uploads"] is None and volumes["pgdata"] is None
    api = doc["services"]["api"]
    assert api["volumes"] == [
        {
            "type": "volume",
            "source": "telenet-uploads",
            "target": "/srv/uploads",
            "volume": {"nocopy": True},
        },
        "./config:/etc/shop:ro",
        {
            "type": "volume",
            "source": "telenet-api-2",
            "target": "/var/cache/shop",
            "volume": {"nocopy": True},
        },
        {
            "type": "volume",
            "source": "telenet-api-3",
            "target": "/var/run/secrets/kubernetes.io",
            "read_only": True,
            "volume": {"nocopy": True},
        },
    ]
    assert doc["services"]["worker"]["volumes"] == [
        {
            "type": "volume",
            "source": "telenet-uploads",
            "target": "/data/uploads",
            "read_only": True,
            "volume": {"nocopy": True},
        }
    ]
    assert result.volumes == ("telenet-api-2", "telenet-api-3", "telenet-uploads")
    assert result.notes == (
        "Skipping auto-mounting of /etc/shop in api: the service mounts a bind there",
    )


def test_shared_volume_stays_writable_if_one_needs_it(tmp_path: Path) -> None:
    """api's remote mount is :ro, worker mounts the volume rw: the volume is not ro."""
    text = SHOP.replace("        - /srv/uploads\n", "        - /srv/uploads:ro\n").replace(
        "uploads:/data/uploads:ro", "uploads:/data/uploads"
    )
    doc = rendered(tmp_path, text).document
    assert "ro" not in doc["volumes"]["telenet-uploads"]["driver_opts"]
    assert doc["services"]["api"]["volumes"][0]["read_only"] is True
    assert "read_only" not in doc["services"]["worker"]["volumes"][0]


def test_every_use_read_only_makes_the_volume_read_only(tmp_path: Path) -> None:
    text = SHOP.replace("        - /srv/uploads\n", "        - /srv/uploads:ro\n")
    doc = rendered(tmp_path, text).document
    assert doc["volumes"]["telenet-uploads"]["driver_opts"]["ro"] == "true"


def test_service_entry_read_only(tmp_path: Path) -> None:
    """An entry's own :ro (or read_only) makes the remote entry read-only."""
    text = SHOP.replace("- uploads:/srv/uploads", "- uploads:/srv/uploads:ro").replace(
        "      - /var/cache/shop\n    x-telenet:",
        "      - {type: volume, target: /var/cache/shop, read_only: true}\n    x-telenet:",
    )
    doc = rendered(tmp_path, text).document
    assert doc["services"]["api"]["volumes"][0]["read_only"] is True
    assert doc["services"]["api"]["volumes"][2]["read_only"] is True
    assert doc["volumes"]["telenet-api-2"]["driver_opts"]["ro"] == "true"


def test_remote_read_only_policy(tmp_path: Path) -> None:
    text = SHOP.replace(
        "  mounts:\n", "  mounts:\n    - volume: uploads\n      policy: remoteReadOnly\n"
    ).replace("uploads:/data/uploads:ro", "uploads:/data/uploads")
    doc = rendered(tmp_path, text).document
    assert doc["volumes"]["telenet-uploads"]["driver_opts"]["ro"] == "true"
    assert doc["services"]["api"]["volumes"][0]["read_only"] is True
    assert doc["services"]["worker"]["volumes"][0]["read_only"] is True


def test_local_policy_keeps_the_compose_volume(tmp_path: Path) -> None:
    """pgdata is local: db's remote mount at its path is skipped and the volume kept."""
    text = SHOP.replace(
        "  db:\n    image: postgres:16\n",
        "  db:\n    image: postgres:16\n    x-telenet:\n      type: engage\n"
        "      agent: 10.96.0.30:8022\n"
        "      remoteMounts: [/var/lib/postgresql/data, /docker-entrypoint-initdb.d:ro]\n",
    )
    bridges = {"api": API_BRIDGE, "db": BridgeFacts("172.17.0.2", 33001, "10.96.0.30:8022")}
    result = rendered(tmp_path, text, Facts("shop", {"blue": BLUE}, bridges, DOCKER_NETWORKS))
    db = result.document["services"]["db"]
    assert db["volumes"][0] == "pgdata:/var/lib/postgresql/data"
    assert db["volumes"][1]["source"] == "telenet-db-1"
    assert result.document["volumes"]["telenet-db-1"]["driver_opts"]["port"] == "33001"
    assert "Skipping auto-mounting of /var/lib/postgresql/data in db: volume pgdata is local" in (
        result.notes
    )


def test_default_network_subnet_avoids_routes_and_docker_networks(tmp_path: Path) -> None:
    """172.16 (blue), 172.17 (bridge), 172.18 (kind) are Docker's; 10.96/12 is routed."""
    doc = rendered(tmp_path).document
    assert doc["networks"]["default"] == {"ipam": {"config": [{"subnet": "172.19.0.0/16"}]}}
    assert doc["networks"]["back"] == {"ipam": {"config": [{"subnet": "172.20.0.0/16"}]}}
    routes = ("172.19.0.0/16", "172.20.0.0/14")
    blue = ConnectionFacts("blue", "blue", BLUE.dns, routes)
    doc = rendered(
        tmp_path, facts=Facts("shop", {"blue": blue}, {"api": API_BRIDGE}, DOCKER_NETWORKS)
    ).document
    assert doc["networks"]["default"]["ipam"]["config"][0]["subnet"] == "172.24.0.0/16"


def test_existing_project_network_keeps_its_subnet(tmp_path: Path) -> None:
    """shop_default exists: its subnet stays, unless a route now overlaps it."""
    networks = {**DOCKER_NETWORKS, "shop_default": ("172.30.0.0/16",)}
    facts = Facts("shop", {"blue": BLUE}, {"api": API_BRIDGE}, networks)
    doc = rendered(tmp_path, facts=facts).document
    assert doc["networks"]["default"]["ipam"]["config"] == [{"subnet": "172.30.0.0/16"}]
    blue = ConnectionFacts("blue", "blue", BLUE.dns, ("172.30.5.0/24",))
    facts = Facts("shop", {"blue": blue}, {"api": API_BRIDGE}, networks)
    doc = rendered(tmp_path, facts=facts).document
    assert doc["networks"]["default"]["ipam"]["config"] == [{"subnet": "172.19.0.0/16"}]


def test_users_ipam_and_external_networks_are_kept(tmp_path: Path) -> None:
    text = SHOP.replace(
        "networks:\n  back:\n",
        "networks:\n  default:\n    ipam:\n      config: [{subnet: 192.168.50.0/24}]\n"
        "  back:\n    external: true\n    name: corp-back\n",
    )
    doc = rendered(tmp_path, text).document
    assert doc["networks"]["default"] == {"ipam": {"config": [{"subnet": "192.168.50.0/24"}]}}
    assert doc["networks"]["back"] == {"external": True, "name": "corp-back"}


def test_the_extension_is_left_out_and_the_model_unchanged(tmp_path: Path) -> None:
    project, extension = load(tmp_path, SHOP)
    before = copy.deepcopy(project.model)
    facts = Facts("shop", {"blue": BLUE}, {"api": API_BRIDGE}, DOCKER_NETWORKS)
    doc = render(project.model, extension, project.active_services(), facts).document
    assert project.model == before
    assert "x-telenet" not in doc
    assert all("x-telenet" not in s for s in doc["services"].values())
    assert (tmp_path / "compose.yaml").read_text() == SHOP


def test_inactive_services_are_left_alone(tmp_path: Path) -> None:
    """admin (profile debug) joins nothing unless its profile is on."""
    assert "networks" not in rendered(tmp_path).document["services"]["admin"]
    doc = rendered(tmp_path, profiles=("debug",)).document
    assert doc["services"]["admin"]["networks"] == {"default": None, "telenet-blue": None}


def test_overlapping_routes_on_one_service(tmp_path: Path) -> None:
    """Two connections on one service whose daemons route overlapping subnets."""
    text = SHOP.replace("  mounts:\n", "    - name: green\n  mounts:\n").replace(
        "      type: connect\n", "      type: connect\n      connection: [blue, green]\n", 1
    )
    text = text.replace("      agent: 10.96", "      connection: blue\n      agent: 10.96")
    text = text.replace(
        "    profiles: [debug]\n    x-telenet:\n      type: connect\n",
        "    profiles: [debug]\n    x-telenet:\n      type: connect\n      connection: blue\n",
    )
    green = ConnectionFacts("green", "green", WorkloadDNS(("172.21.0.2",)), ("10.100.0.0/16",))
    facts = Facts("shop", {"blue": BLUE, "green": green}, {"api": API_BRIDGE}, DOCKER_NETWORKS)
    with pytest.raises(ComposeError) as e:
        rendered(tmp_path, text, facts)
    assert str(e.value) == (
        "service worker: connections blue and green route overlapping subnets (10.96.0.0/12 and "
        "10.100.0.0/16); a container cannot reach both"
    )
    green = ConnectionFacts("green", "green", WorkloadDNS(("172.21.0.2",)), ("10.200.0.0/16",))
    facts = Facts("shop", {"blue": BLUE, "green": green}, {"api": API_BRIDGE}, DOCKER_NETWORKS)
    worker = rendered(tmp_path, text, facts).document["services"]["worker"]
    assert worker["networks"] == {"back": None, "telenet-blue": None, "telenet-green": None}
    assert worker["dns"] == ["172.16.0.2", "172.21.0.2"]


def test_missing_facts(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="^connection blue is not connected$"):
        rendered(tmp_path, facts=Facts("shop"))
    with pytest.raises(ComposeError, match="^service api: no bridge to 10.96.0.20:8022 is open$"):
        rendered(tmp_path, facts=Facts("shop", {"blue": BLUE}))


def test_rendered_file_reads_back_the_same(tmp_path: Path) -> None:
    """The dumped YAML is read back by a YAML 1.2 reader to the same document."""
    project, extension = load(tmp_path, SHOP)
    facts = Facts("shop", {"blue": BLUE}, {"api": API_BRIDGE}, DOCKER_NETWORKS)
    document = render(project.model, extension, project.active_services(), facts).document
    text = dump(document, project)
    assert text.startswith("# Rendered by telenet compose for project shop from ")
    (again,) = parse_source(text, "rendered.yaml")
    assert again.data == document
    assert "FEATURE_FLAGS: 'yes'" in text
    assert "- 8000:80" in text or "- '8000:80'" in text
    api: Any = again.data["services"]["api"]
    assert api["ports"] == ["8000:80"] and api["environment"]["FEATURE_FLAGS"] == "yes"


def test_remote_entries_are_never_copied_into(tmp_path: Path) -> None:
    """
    Every entry that mounts a telemount volume says volume.nocopy (Docker would otherwise
    copy the image's files into the remote directory), over the user's own nocopy: false and
    keeping the entry's other volume options.
    """
    text = SHOP.replace(
        "      - /var/cache/shop\n    x-telenet:",
        "      - {type: volume, target: /var/cache/shop, volume: {nocopy: false, subpath: s}}\n"
        "    x-telenet:",
    )
    doc = rendered(tmp_path, text).document
    api = doc["services"]["api"]["volumes"]
    assert api[2]["volume"] == {"nocopy": True, "subpath": "s"}
    telemount = [
        entry
        for service in doc["services"].values()
        for entry in service.get("volumes") or []
        if isinstance(entry, dict) and str(entry.get("source", "")).startswith("telenet-")
    ]
    assert len(telemount) == 4
    assert all(entry["volume"]["nocopy"] is True for entry in telemount)


def test_telemount_volumes_wait_for_their_agent(tmp_path: Path) -> None:
    """The connection's intercept.mountTimeout becomes each telemount volume's timeout."""
    blue = attrs.evolve(BLUE, mount_timeout=7.5)
    facts = Facts("shop", {"blue": blue}, {"api": API_BRIDGE}, DOCKER_NETWORKS)
    volumes = rendered(tmp_path, facts=facts).document["volumes"]
    telemount = [v for k, v in volumes.items() if k.startswith("telenet-")]
    assert len(telemount) == 3
    assert all(v["driver_opts"]["timeout"] == "7.5s" for v in telemount)


def test_mount_options_give_the_telemount_volumes_an_owner(tmp_path: Path) -> None:
    """mountOptions (as engage's --mount-opt) reach every telemount volume of the service."""
    text = SHOP.replace(
        "      container: api\n",
        "      container: api\n      mountOptions: [uid=1000, gid=1000, umask=027]\n",
    )
    volumes = rendered(tmp_path, text).document["volumes"]
    telemount = [v for k, v in volumes.items() if k.startswith("telenet-")]
    assert len(telemount) == 3
    for volume in telemount:
        options = volume["driver_opts"]
        assert (options["uid"], options["gid"], options["umask"]) == ("1000", "1000", "027")
    assert "uid" not in rendered(tmp_path).document["volumes"]["telenet-uploads"]["driver_opts"]
