"""
The x-telenet extension (and Telepresence's x-tele): read from the files, merged across -f
files, checked against the project; every error one line with the file, line and key path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from telenet.cli.compose.extcheck import check_extension
from telenet.cli.compose.extension import Extension, MountPolicy
from telenet.cli.compose.extmerge import read_extension
from telenet.cli.compose.project import ComposeOptions, Project, load_project
from telenet.cli.compose.source import ComposeError
from telenet.cli.runflags import RemoteMount

EMOJIVOTO = """\
name: emojivoto
x-telenet:
  connections:
    - name: blue
      vifNetwork: kind
      subnets: [10.96.0.0/12]
      clusterDNS: 10.96.0.10
      clusterDomains: [cluster.local]
  mounts:
    - volume: polls
      policy: remoteReadOnly
    - volumePattern: ^cache-
      policy: local
services:
  web:
    image: ghcr.io/telepresenceio/emojivoto-web:0.3.0
    environment:
      - EMOJISVC_HOST=emoji:8080
    ports:
      - "8080:8080"
    x-telenet:
      type: connect
  voting:
    image: ghcr.io/telepresenceio/emojivoto-voting:0.3.0
    volumes:
      - polls:/data
      - cache-voting:/cache
    x-telenet:
      type: engage
      agent: 10.96.0.20:8022
      container: voting-svc
      remoteMounts:
        - /data
        - /cache
        - /var/run/secrets/kubernetes.io:ro
  emoji:
    image: ghcr.io/telepresenceio/emojivoto-emoji:0.3.0
volumes:
  polls:
  cache-voting:
"""


def load(
    tmp_path: Path, *texts: str, profiles: tuple[str, ...] = ()
) -> tuple[Project, Extension, list[str]]:
    files = []
    for i, text in enumerate(texts):
        name = "compose.yaml" if i == 0 else f"compose.{i}.yaml"
        (tmp_path / name).write_text(text)
        files.append(name)
    warnings: list[str] = []
    project = load_project(ComposeOptions(files=tuple(files), profiles=profiles), str(tmp_path), {})
    extension = read_extension(project.documents, project.services(), warnings.append)
    check_extension(project, extension, project.active_services())
    return project, extension, warnings


def error(tmp_path: Path, *texts: str) -> str:
    with pytest.raises(ComposeError) as e:
        load(tmp_path, *texts)
    message = str(e.value)
    assert "\n" not in message
    return message.replace(str(tmp_path) + "/", "")


def test_the_extension_as_values(tmp_path: Path) -> None:
    _, ext, warnings = load(tmp_path, EMOJIVOTO)
    assert warnings == []
    (blue,) = ext.connections
    assert blue.request().name == "blue"
    assert (blue.vif_network, blue.subnets, blue.cluster_dns, blue.cluster_domains) == (
        "kind",
        ("10.96.0.0/12",),
        "10.96.0.10",
        ("cluster.local",),
    )
    assert str(blue.where) == f"{tmp_path}/compose.yaml:4"
    assert ext.mounts == (
        MountPolicy("remoteReadOnly", volume="polls"),
        MountPolicy("local", pattern="^cache-"),
    )
    assert sorted(ext.services) == ["voting", "web"]
    voting = ext.services["voting"]
    assert (voting.type, voting.connections, voting.agent, voting.container) == (
        "engage",
        ("blue",),
        "10.96.0.20:8022",
        "voting-svc",
    )
    assert voting.remote_mounts == (
        RemoteMount("/data", False),
        RemoteMount("/cache", False),
        RemoteMount("/var/run/secrets/kubernetes.io", True),
    )
    assert ext.services["web"].type == "connect"
    assert ext.policy("polls") == MountPolicy("remoteReadOnly", volume="polls")
    assert ext.policy("cache-voting") == MountPolicy("local", pattern="^cache-")
    assert ext.policy("other") is None


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "x-telenet:\n  connections:\n    - name: blue\n      vifnetwork: kind\n",
            "compose.yaml:4: x-telenet.connections[0].vifnetwork: unknown key (known: name, vif, "
            "vifNetwork, subnets, clusterDNS, clusterDomains, namespace, mappedNamespaces)",
        ),
        (
            "x-telenet:\n  connections:\n    - name: blue\n      subnets: 10.96.0.0/12\n",
            "compose.yaml:4: x-telenet.connections[0].subnets: expected a list of strings, got "
            "'10.96.0.0/12'",
        ),
        (
            "x-telenet:\n  connections:\n    - name: blue\n      subnets: [10.96.0.0/33]\n",
            "compose.yaml:4: x-telenet.connections[0].subnets[0] '10.96.0.0/33' is not a CIDR "
            "like 10.96.0.0/12",
        ),
        (
            "x-telenet:\n  connections: {name: blue}\n",
            "compose.yaml:2: x-telenet.connections: expected a list of mappings, got a mapping",
        ),
        (
            "x-telenet:\n  connection: []\n",
            "compose.yaml:2: x-telenet.connection: unknown key (known: connections, mounts)",
        ),
        (
            "x-telenet:\n  connections:\n    - {name: blue, vif: eth1, vifNetwork: kind}\n",
            "compose.yaml:3: x-telenet.connections[0]: give vif or vifNetwork, not both",
        ),
        (
            "x-telenet:\n  connections:\n    - {name: blue}\n    - {name: blue}\n",
            "compose.yaml:4: x-telenet.connections[1]: connection 'blue' is already declared at "
            "line 3",
        ),
        (
            "x-telenet:\n  connections:\n    - {name: 'blue green'}\n",
            "compose.yaml:3: x-telenet.connections[0].name: 'blue green' is not a connection name",
        ),
        (
            "x-telenet:\n  mounts:\n    - {volume: a, volumePattern: b}\n",
            "compose.yaml:3: x-telenet.mounts[0]: give volume (a name) or volumePattern",
        ),
        (
            "x-telenet:\n  mounts:\n    - {volumePattern: '(', policy: local}\n",
            "compose.yaml:3: x-telenet.mounts[0].volumePattern: '(' is not a regular expression",
        ),
        (
            "x-telenet:\n  mounts:\n    - {volume: a, policy: remote-ro}\n",
            "compose.yaml:3: x-telenet.mounts[0].policy: 'remote-ro': expected local, remote, "
            "remoteReadOnly",
        ),
        (
            "services:\n  api:\n    image: x\n    x-telenet:\n      type: engage\n"
            "      agent: agent.svc\n",
            "compose.yaml:6: services.api.x-telenet.agent 'agent.svc': expected HOST:PORT",
        ),
        (
            "services:\n  api:\n    image: x\n    x-telenet:\n      type: engage\n"
            "      agent: a:1\n      remoteMounts: [data]\n",
            "compose.yaml:7: services.api.x-telenet.remoteMounts[0] 'data': the path must be "
            "absolute",
        ),
        (
            "services:\n  api:\n    image: x\n    x-telenet:\n      type: engage\n"
            "      agent: a:1\n      remoteMounts: [/d, /d/:ro]\n",
            "compose.yaml:7: services.api.x-telenet.remoteMounts[1]: /d is mounted twice",
        ),
        (
            "services:\n  api:\n    image: x\n    x-telenet:\n      type: engage\n"
            "      agent: a:1\n      ports: [80]\n",
            "compose.yaml:7: services.api.x-telenet.ports: unknown key (known: type, connection, "
            "agent, container, remoteMounts, mountOptions)",
        ),
        (
            "services:\n  api:\n    image: x\n    x-telenet:\n      type: enage\n",
            "compose.yaml:5: services.api.x-telenet.type: 'enage': expected connect or engage",
        ),
        (
            "services:\n  api:\n    image: x\n    x-telenet: connect\n",
            "compose.yaml:4: services.api.x-telenet: expected a mapping, got 'connect'",
        ),
        (
            "services:\n  api:\n    image: x\n    x-telenet: {type: connect, agent: a:1}\n",
            "compose.yaml:4: services.api.x-telenet.agent: only type engage takes it",
        ),
    ],
)
def test_bad_input_names_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    assert error(tmp_path, text).startswith(message)


def test_engage_without_an_agent(tmp_path: Path) -> None:
    text = "services:\n  api:\n    image: x\n    x-telenet:\n      type: engage\n"
    assert error(tmp_path, text) == (
        "compose.yaml:5: services.api.x-telenet: type engage needs an agent: agent: HOST:PORT "
        "(the agent's SFTP server, as the daemon reaches it)"
    )


def test_unknown_connection(tmp_path: Path) -> None:
    text = EMOJIVOTO.replace(
        "      type: connect\n", "      type: connect\n      connection: red\n"
    )
    assert error(tmp_path, text) == (
        "compose.yaml:23: services.web.x-telenet.connection: no connection 'red' "
        "(x-telenet.connections declares blue)"
    )


def test_connection_required_among_several(tmp_path: Path) -> None:
    text = "x-telenet:\n  connections: [{name: a}, {name: b}]\nservices:\n  api:\n" + (
        "    image: x\n    x-telenet: {type: connect}\n"
    )
    assert error(tmp_path, text) == (
        "compose.yaml:6: services.api.x-telenet: connection is required: x-telenet.connections "
        "declares several (a, b)"
    )


def test_no_connection_declared_is_the_kubeconfig_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in Telepresence: no connections means one with the kubeconfig's defaults."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    _, ext, _ = load(tmp_path, "services:\n  api:\n    image: x\n    x-telenet: {type: connect}\n")
    assert [c.name for c in ext.connections] == ["in-cluster-default-cn"]
    assert ext.services["api"].connections == ("in-cluster-default-cn",)


TELE = """\
x-tele:
  connections:
    - namespace: emojivoto
      also-proxy: [10.0.0.0/16]
      manager-namespace: ambassador
services:
  web:
    image: ghcr.io/telepresenceio/emojivoto-web:0.3.0
    x-tele:
      type: connect
"""


def test_x_tele_connections_and_connect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Telepresence's file works: namespace names the connection, also-proxy is routed."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    (tmp_path / "kubeconfig").write_text("current-context: kind\ncontexts: [{name: kind}]\n")
    _, ext, warnings = load(tmp_path, TELE)
    (conn,) = ext.connections
    assert (conn.name, conn.subnets) == ("kind-emojivoto-cn", ("10.0.0.0/16",))
    # The namespace is also the connection's, as Telepresence's connect has it.
    assert conn.namespace == "emojivoto" and conn.request().namespace == "emojivoto"
    text = TELE.replace(
        "      manager", "      mapped-namespaces: [emojivoto, shared]\n      manager"
    )
    (conn,) = load(tmp_path, text)[1].connections
    assert conn.mapped_namespaces == ("emojivoto", "shared")
    assert ext.key == "x-tele"
    assert ext.services["web"].connections == ("kind-emojivoto-cn",)
    assert warnings == [
        f"{tmp_path}/compose.yaml:5: x-tele.connections[0].manager-namespace: ignored (telenet "
        "has no traffic manager)"
    ]


@pytest.mark.parametrize("kind", ["intercept", "ingest", "replace", "wiretap", "proxy"])
def test_x_tele_traffic_manager_types_are_refused(tmp_path: Path, kind: str) -> None:
    text = TELE.replace("type: connect", f"type: {kind}\n      ports: [8080:80]")
    assert error(tmp_path, text) == (
        f"compose.yaml:10: services.web.x-tele.type: service web: type {kind} needs "
        "Telepresence's traffic manager, which telenet does not have; telenet offers type: "
        "engage (what telenet engage does: the agent's directories mounted, under x-telenet) or "
        "type: connect"
    )


def test_x_tele_never_proxy_and_ignore_policy(tmp_path: Path) -> None:
    text = TELE.replace("also-proxy", "never-proxy")
    assert error(tmp_path, text).startswith(
        "compose.yaml:4: x-tele.connections[0].never-proxy: telenet routes the subnets"
    )
    text = TELE.replace("services:", "  mounts:\n    - {volume: data, policy: ignore}\nservices:")
    assert error(tmp_path, text).startswith(
        "compose.yaml:7: x-tele.mounts[0].policy: policy ignore is not supported by telenet"
    )


def test_x_telenet_wins_over_x_tele(tmp_path: Path) -> None:
    """A file for both tools: telenet reads x-telenet and says it ignores x-tele."""
    text = TELE.replace(
        "services:", "x-telenet:\n  connections: [{name: blue}]\nservices:"
    ).replace("    x-tele:\n      type: connect\n", "    x-tele: {type: proxy}\n") + (
        "    x-telenet: {type: connect}\n"
    )
    _, ext, warnings = load(tmp_path, text)
    assert [c.name for c in ext.connections] == ["blue"]
    assert ext.services["web"].connections == ("blue",)
    assert [w.split(": ", 1)[1] for w in warnings] == [
        "x-tele: ignored, x-telenet is given",
        "services.web.x-tele: ignored, x-telenet is given",
    ]


def test_several_files_merge_the_extension(tmp_path: Path) -> None:
    """An override file adds a connection, changes one by name, and engages a service."""
    override = """\
x-telenet:
  connections:
    - name: blue
      clusterDNS: 10.96.0.53
    - name: green
      subnets: [10.200.0.0/16]
  mounts:
    - volume: polls
      policy: remote
services:
  web:
    x-telenet:
      connection: green
  voting:
    x-telenet:
      connection: blue
      remoteMounts: [/data:ro, /tmp/extra]
"""
    _, ext, _ = load(tmp_path, EMOJIVOTO, override)
    blue, green = ext.connections
    assert (blue.name, blue.vif_network, blue.cluster_dns) == ("blue", "kind", "10.96.0.53")
    assert (green.name, green.subnets) == ("green", ("10.200.0.0/16",))
    assert ext.services["web"].connections == ("green",)
    assert ext.services["web"].type == "connect"
    assert [(m.path, m.readonly) for m in ext.services["voting"].remote_mounts] == [
        ("/cache", False),
        ("/var/run/secrets/kubernetes.io", True),
        ("/data", True),
        ("/tmp/extra", False),
    ]
    # The later policy for polls wins.
    assert ext.policy("polls") == MountPolicy("remote", volume="polls")


def test_reset_and_override_of_the_extension(tmp_path: Path) -> None:
    override = """\
x-telenet:
  mounts: !reset []
services:
  voting:
    x-telenet: !override
      type: connect
"""
    _, ext, _ = load(tmp_path, EMOJIVOTO, override)
    assert ext.mounts == ()
    assert ext.services["voting"].type == "connect"
    assert ext.services["voting"].agent is None


def test_policy_for_a_volume_the_project_lacks(tmp_path: Path) -> None:
    text = EMOJIVOTO.replace("volume: polls", "volume: pols")
    assert error(tmp_path, text) == (
        "compose.yaml:10: x-telenet.mounts[0].volume: no volume 'pols' in the project"
    )


def test_remote_mount_no_service_uses(tmp_path: Path) -> None:
    """A remote policy for a volume no engaged service mounts at one of its remote mounts."""
    text = EMOJIVOTO.replace("        - /data\n", "")
    assert error(tmp_path, text) == (
        "compose.yaml:10: x-telenet.mounts[0].volume: volume polls is remoteReadOnly, but no "
        "engaged service mounts it at one of its remoteMounts (a remote mount no service uses)"
    )


def test_overlapping_subnets_on_one_service(tmp_path: Path) -> None:
    text = (
        EMOJIVOTO.replace(
            "  mounts:", "    - name: green\n      subnets: [10.100.0.0/16]\n  mounts:"
        )
        .replace("      type: connect\n", "      type: connect\n      connection: [blue, green]\n")
        .replace("      type: engage\n", "      type: engage\n      connection: blue\n")
    )
    assert error(tmp_path, text) == (
        "compose.yaml:25: services.web.x-telenet.connection: connections blue and green route "
        "overlapping subnets (10.96.0.0/12 and 10.100.0.0/16); one service cannot use both"
    )


def test_network_mode_cannot_join(tmp_path: Path) -> None:
    text = EMOJIVOTO.replace(
        "    x-telenet:\n      type: connect\n",
        "    network_mode: host\n    x-telenet:\n      type: connect\n",
    )
    assert error(tmp_path, text) == (
        "compose.yaml:21: services.web.network_mode: 'host': a service of a connection joins "
        "its network; remove network_mode (or the service's x-telenet)"
    )


WORKER = """\
  worker:
    image: ghcr.io/telepresenceio/emojivoto-voting:0.3.0
    volumes: [polls:/srv]
    x-telenet:
      type: engage
      agent: 10.96.0.21:8022
      remoteMounts: [/srv]
"""


def test_one_volume_two_remote_directories(tmp_path: Path) -> None:
    """Two engaged services mapping one volume to different remote directories."""
    text = EMOJIVOTO.replace("  emoji:\n", WORKER + "  emoji:\n")
    assert error(tmp_path, text) == (
        "compose.yaml:42: services.worker: volume polls is the remote mount /srv of container "
        "worker at 10.96.0.21:8022 here, and /data of container voting-svc at 10.96.0.20:8022 "
        "in service voting: give each service its own volume"
    )


def test_profiles_leave_inactive_services_out_of_the_sharing_check(tmp_path: Path) -> None:
    worker = WORKER.replace("    volumes:", "    profiles: [batch]\n    volumes:")
    text = EMOJIVOTO.replace("  emoji:\n", worker + "  emoji:\n")
    project, _, _ = load(tmp_path, text)
    assert "worker" not in project.active_services()
    with pytest.raises(ComposeError, match="give each service its own volume"):
        load(tmp_path, text, profiles=("batch",))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            "[uid=x]",
            "compose.yaml:8: services.api.x-telenet.mountOptions[0]: "
            "uid must be an unsigned integer between 0 and 4294967294",
        ),
        (
            "[ro=true]",
            "compose.yaml:8: services.api.x-telenet.mountOptions[0] 'ro=true': the key must be "
            "one of uid, gid, umask",
        ),
        ("uid=1", "compose.yaml:8: services.api.x-telenet.mountOptions: expected a list of"),
    ],
)
def test_bad_mount_options(tmp_path: Path, options: str, message: str) -> None:
    text = (
        "services:\n  api:\n    image: x\n    x-telenet:\n      type: engage\n"
        f"      agent: 10.0.0.1:8022\n      remoteMounts: [/data]\n      mountOptions: {options}\n"
    )
    assert error(tmp_path, text).startswith(message)


def test_mount_options_only_for_engage(tmp_path: Path) -> None:
    text = (
        "services:\n  api:\n    image: x\n    x-telenet: {type: connect, mountOptions: [uid=1]}\n"
    )
    assert error(tmp_path, text).startswith(
        "compose.yaml:4: services.api.x-telenet.mountOptions: only type engage takes it"
    )
