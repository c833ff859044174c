"""docker-run and engage: the docker create arguments, the network, volumes, bridge, cleanup."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from telenet.cli.config import Config
from telenet.cli.connection import CLIError
from telenet.cli.dockerapi import DockerError
from telenet.cli.interfaces import ContainerSpec
from telenet.cli.naming import LABEL_CONNECTION
from telenet.cli.runflags import parse_run_args
from telenet.cli.runner import (
    Build,
    WorkloadRunner,
    plan_create,
    probe_agent,
    with_built_image,
)

from .test_cli_connect import World


class FakeDockerCLI:
    """``docker create`` / ``docker start`` against the world's MemoryDocker."""

    def __init__(self, world: World, exit_code: int = 0, start_fails: bool = False) -> None:
        self.world = world
        self.exit_code = exit_code
        self.start_fails = start_fails
        self.commands: list[list[str]] = []
        self.mounted_while_running: list[str] = []

    def run(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(args))
        if args[1] == "build":
            if "bad-context" in args:
                return subprocess.CompletedProcess(args, 1, None, None)
            with open(args[3], "w") as f:
                f.write("sha256:built\n")
            self.world.docker.images.add("sha256:built")
            return subprocess.CompletedProcess(args, 0, None, None)
        if args[1] == "create":
            if "bad-image" in args:
                return subprocess.CompletedProcess(args, 125, "", "")
            cid = self.world.docker.create_container(
                ContainerSpec(
                    image=parse_run_args(args[2:]).image or "",
                    command=[],
                    name=f"w{len(self.commands)}",
                )
            )
            return subprocess.CompletedProcess(args, 0, cid + "\n", "")
        return subprocess.CompletedProcess(args, 0, "", "")

    def popen(self, args: list[str]) -> Any:
        self.commands.append(list(args))
        cli = self

        class Proc:
            def wait(self) -> int:
                docker = cli.world.docker
                if cli.start_fails:
                    # As a failing volume mount: the container stays "created".
                    return 1
                docker.start_container(args[-1])
                cli.mounted_while_running = sorted(docker.volumes_by_name)
                docker.kill(args[-1], cli.exit_code)
                if "--rm" in cli.commands[-2]:
                    docker.remove_container(args[-1])
                return cli.exit_code

        return Proc()


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    w.connect("blue")
    yield w


def runner(world: World, cli: FakeDockerCLI, probe: Any = None) -> WorkloadRunner:
    return WorkloadRunner(
        world.connector,
        say=world.said.append,
        sleep=world.clock.sleep,
        run_process=cli.run,
        popen=cli.popen,
        clock=world.clock,
        probe=probe or (lambda host, port, agent: None),
    )


def test_plan_create() -> None:
    """--dns first, --rm when forced, -d and --sig-proxy left out of create, image and command."""
    plan = plan_create(
        parse_run_args(["-d", "--sig-proxy=false", "-p", "80:80", "img", "x"]), "172.16.0.2"
    )
    assert plan.create_args == ["create", "--dns", "172.16.0.2", "-p", "80:80", "img", "x"]
    assert plan.detach
    plan = plan_create(parse_run_args(["-it", "img"]), "1.2.3.4", ["v-0:/a:ro"], force_rm=True)
    assert plan.create_args == [
        "create",
        "--dns",
        "1.2.3.4",
        "--rm",
        "-v",
        "v-0:/a:ro",
        "-i",
        "-t",
        "img",
    ]
    assert plan.tty and plan.interactive
    plan = plan_create(parse_run_args(["--rm", "img"]), "1.2.3.4", force_rm=True)
    assert plan.create_args.count("--rm") == 1
    with pytest.raises(CLIError, match="an image is required"):
        plan_create(parse_run_args(["--rm"]), "1.2.3.4")
    with pytest.raises(CLIError, match="drop -d"):
        plan_create(parse_run_args(["-d", "img"]), "1.2.3.4", force_rm=True)


def test_docker_run_creates_connects_and_starts(world: World) -> None:
    """docker create with the daemon as DNS, connect to the network, start attached."""
    cli = FakeDockerCLI(world, exit_code=3)
    code = runner(world, cli).docker_run(None, ["--rm", "-p", "8080:80", "local/busybox"])
    assert code == 3
    dns = world.connector.find("blue").dns_ip()
    assert cli.commands[0] == [
        "docker",
        "create",
        "--dns",
        dns,
        "--dns-search",
        "default.svc.cluster.local",
        "--dns-search",
        "svc.cluster.local",
        "--dns-search",
        "cluster.local",
        "--dns-search",
        "tel2-search",
        "--rm",
        "-p",
        "8080:80",
        "local/busybox",
    ]
    assert cli.commands[1][:3] == ["docker", "start", "--attach"]
    joins = [c for c in world.docker.calls if c[:2] == ("connect", "blue")]
    assert joins[-1] == ("connect", "blue", "w1", None)


def test_docker_run_failures(world: World) -> None:
    """docker create's own failure is its exit code; a network failure removes the container."""
    cli = FakeDockerCLI(world)
    assert runner(world, cli).docker_run(None, ["bad-image"]) == 125
    world.docker.fail["connect"] = DockerError("network blue not found")
    with pytest.raises(CLIError, match="could not connect the container to network blue"):
        runner(world, cli).docker_run(None, ["local/busybox"])
    assert world.docker.container_names() == ["tp-blue"]


def test_docker_run_needs_a_live_connection(world: World) -> None:
    """No connection, or a dead daemon: one line saying what to do."""
    world.docker.kill("tp-blue")
    with pytest.raises(CLIError, match="daemon of blue is not running: run telenet connect"):
        runner(world, FakeDockerCLI(world)).docker_run(None, ["local/busybox"])
    with pytest.raises(CLIError, match="not connected to green"):
        runner(world, FakeDockerCLI(world)).docker_run("green", ["local/busybox"])


def test_engage_mounts_remote_dirs_and_cleans_up(world: World) -> None:
    """Bridge, one telemount volume per remote mount, user -v wins, --rm; all gone after."""
    cli = FakeDockerCLI(world, exit_code=0)
    code = runner(world, cli).engage(
        None,
        "10.96.0.20:8022",
        "echo",
        ["/var/run/secrets/kubernetes.io:ro", "/data", "/etc/app"],
        ["-v", "/tmp/d:/data", "local/busybox", "ls"],
    )
    assert code == 0
    create = cli.commands[0]
    assert create[create.index("--rm") :] == [
        "--rm",
        "-v",
        "echo-0:/var/run/secrets/kubernetes.io:ro,nocopy",
        "-v",
        "echo-1:/etc/app:nocopy",
        "-v",
        "/tmp/d:/data",
        "local/busybox",
        "ls",
    ]
    assert cli.mounted_while_running == ["echo-0", "echo-1"]
    created = [c for c in world.docker.calls if c[0] == "create_volume"]
    assert created == [("create_volume", "echo-0"), ("create_volume", "echo-1")]
    assert world.docker.volumes_by_name == {}
    assert world.control.bridges == {}
    (opened,) = [c for c in world.control.calls if c[0] == "open_bridge"]
    assert ("close_bridge", opened[2]) in world.control.calls
    assert "Skipping auto-mounting of /data: the docker run flags mount it" in world.said
    # The mount completion delay was waited for.
    assert world.clock.now >= 0.3


def record_volumes(world: World) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    """The volumes ``world``'s Docker is asked to create from now on: (driver, options, labels)."""
    created: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {}
    original = world.docker.create_volume

    def record(name: str, driver: str, options: dict[str, str], labels: dict[str, str]) -> None:
        created[name] = (driver, options, labels)
        original(name, driver, options, labels)

    world.docker.create_volume = record  # type: ignore[method-assign]
    return created


def test_engage_volume_options(world: World) -> None:
    """
    Volume options: host (daemon's bridge address), bridge port, container, dir, ro, and the
    first connection's timeout (intercept.mountTimeout).
    """
    cli = FakeDockerCLI(world)
    seen = record_volumes(world)
    runner(world, cli).engage(None, "10.96.0.20:8022", "echo", ["/secrets:ro"], ["local/busybox"])
    driver, options, labels = seen["echo-0"]
    assert driver == "telenet/telemount:latest"
    assert options == {
        "host": "172.17.0.2",
        "port": "33000",
        "container": "echo",
        "dir": "/secrets",
        "ro": "true",
        "timeout": "10s",
    }
    assert labels == {LABEL_CONNECTION: "blue"}


def test_engage_gives_no_timeout_to_telepresences_go_plugin(world: World) -> None:
    """
    A managed telemount plug-in that is not telenet's (Telepresence's refuses options it does
    not know) gets no timeout option; the agent probe still waits intercept.mountTimeout.
    """
    cli = FakeDockerCLI(world)
    created = record_volumes(world)
    world.docker.plugins["telenet/telemount:latest"]["Config"] = {
        "Description": "Docker volume plugin for Telepresence"
    }
    runner(world, cli).engage(None, "10.96.0.20:8022", "echo", ["/secrets:ro"], ["local/busybox"])
    options = created["echo-0"][1]
    assert "timeout" not in options
    assert options["dir"] == "/secrets"


def test_engage_mount_options_go_to_every_volume(world: World) -> None:
    """--mount-opt uid/gid/umask reach each telemount volume the engagement creates."""
    cli = FakeDockerCLI(world)
    created = record_volumes(world)
    opts = ["uid=1000", "gid=1000", "umask=022"]
    runner(world, cli).engage(
        None, "10.96.0.20:8022", "echo", ["/a", "/b:ro"], ["local/busybox"], mount_opts=opts
    )
    assert sorted(created) == ["echo-0", "echo-1"]
    for _, options, _ in created.values():
        assert (options["uid"], options["gid"], options["umask"]) == ("1000", "1000", "022")


@pytest.mark.parametrize(
    "opt, message",
    [
        ("uid", "--mount-opt 'uid': expected KEY=VALUE"),
        ("host=x", "--mount-opt 'host=x': the key must be one of uid, gid, umask"),
        ("uid=-5", "--mount-opt: uid must be an unsigned integer between 0 and 4294967294"),
        ("umask=999", "--mount-opt: umask must be an octal number between 0 and 0777"),
    ],
)
def test_engage_bad_mount_option(world: World, opt: str, message: str) -> None:
    """A bad --mount-opt is refused before anything is created."""
    with pytest.raises(CLIError) as e:
        runner(world, FakeDockerCLI(world)).engage(
            None, "h:1", "echo", ["/a"], ["img"], mount_opts=[opt]
        )
    assert str(e.value) == message
    assert world.docker.volumes_by_name == {}


def test_engage_cleans_up_on_failure(world: World) -> None:
    """A failure after the volumes exist still removes them and closes the bridge."""
    cli = FakeDockerCLI(world)
    world.docker.fail["connect"] = DockerError("boom")
    with pytest.raises(CLIError, match="could not connect the container"):
        runner(world, cli).engage(None, "10.96.0.20:8022", "echo", ["/a", "/b"], ["local/busybox"])
    assert world.docker.volumes_by_name == {}
    assert world.control.bridges == {}
    assert world.docker.container_names() == ["tp-blue"]


def test_engage_start_failure_leaves_nothing(world: World) -> None:
    """A container that cannot start (a mount failed) is removed with the volumes and bridge."""
    cli = FakeDockerCLI(world, start_fails=True)
    code = runner(world, cli).engage(None, "h:1", "echo", ["/a"], ["local/busybox"])
    assert code == 1
    assert world.docker.container_names() == ["tp-blue"]
    assert world.docker.volumes_by_name == {} and world.control.bridges == {}


def test_engage_agent_unreachable(world: World) -> None:
    """An agent the daemon cannot reach: one line, no volume, bridge closed."""

    def probe(host: str, port: int, agent: str) -> None:
        raise CLIError(f"agent {agent} is unreachable from the daemon (it closed the connection)")

    with pytest.raises(CLIError, match="agent 10.9.9.9:8022 is unreachable from the daemon"):
        runner(world, FakeDockerCLI(world), probe).engage(
            None, "10.9.9.9:8022", "echo", ["/a"], ["local/busybox"]
        )
    assert world.docker.volumes_by_name == {} and world.control.bridges == {}


def test_engage_input_errors(world: World) -> None:
    """Bad --agent, --container, --remote-mount or docker flags fail before anything is made."""
    r = runner(world, FakeDockerCLI(world))
    with pytest.raises(CLIError, match="expected HOST:PORT"):
        r.engage(None, "10.96.0.20", "echo", [], ["img"])
    with pytest.raises(CLIError, match="not a container name"):
        r.engage(None, "h:1", "a/b", [], ["img"])
    with pytest.raises(CLIError, match="must be absolute"):
        r.engage(None, "h:1", "echo", ["rel"], ["img"])
    with pytest.raises(CLIError, match="needs an argument"):
        r.engage(None, "h:1", "echo", [], ["-v"])
    world.control.refuse_agent = "Couldn't listen on any:0: [Errno 98] Address already in use."
    with pytest.raises(CLIError, match="could not open a bridge to h:1"):
        r.engage(None, "h:1", "echo", ["/a"], ["img"])
    assert world.docker.volumes_by_name == {}


def test_engage_leftover_volume(world: World) -> None:
    """A volume of an earlier engagement is replaced; someone else's is refused."""
    driver = "telenet/telemount:latest"
    world.docker.create_volume("echo-0", driver, {}, {LABEL_CONNECTION: "blue"})
    runner(world, FakeDockerCLI(world)).engage(None, "h:1", "echo", ["/a"], ["local/busybox"])
    assert world.docker.volumes_by_name == {}
    world.docker.create_volume("echo-0", driver, {}, {})
    with pytest.raises(CLIError, match="volume named echo-0 exists and is not this engagement's"):
        runner(world, FakeDockerCLI(world)).engage(None, "h:1", "echo", ["/a"], ["img"])
    assert world.control.bridges == {}


def test_engage_same_container_twice_keeps_volumes_apart(world: World) -> None:
    """
    While another engagement of this connection uses echo-0, the next one mounts echo-0-<its
    bridge port> and removes only its own volume.
    """
    driver = "telenet/telemount:latest"
    world.docker.create_volume("echo-0", driver, {}, {LABEL_CONNECTION: "blue"})
    world.docker.volumes_in_use.add("echo-0")
    cli = FakeDockerCLI(world)
    runner(world, cli).engage(None, "h:1", "echo", ["/a"], ["local/busybox"])
    ((_, _, port),) = [c for c in world.control.calls if c[0] == "open_bridge"]
    assert ("create_volume", f"echo-0-{port}") in world.docker.calls
    assert ("remove_volume", f"echo-0-{port}") in world.docker.calls
    assert list(world.docker.volumes_by_name) == ["echo-0"]
    assert world.control.bridges == {}


def _server(reply: bytes | None) -> tuple[socket.socket, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(9)
            if reply is not None:
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_probe_agent() -> None:
    """The probe passes on an SFTP VERSION, and fails on a close, a wrong answer or no port."""
    for reply, ok in (
        (struct.pack(">IBI", 5, 2, 3), True),
        (None, False),
        (struct.pack(">IBI", 5, 101, 3), False),
    ):
        listener, thread = _server(reply)
        port = listener.getsockname()[1]
        try:
            if ok:
                probe_agent("127.0.0.1", port, "a:1")
            else:
                with pytest.raises(CLIError, match="agent a:1 is unreachable from the daemon"):
                    probe_agent("127.0.0.1", port, "a:1")
        finally:
            thread.join(5)
            listener.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(CLIError, match="unreachable from the daemon .*refused"):
        probe_agent("127.0.0.1", free, "a:1")


def test_build_args_and_built_image() -> None:
    """KEY=VALUE options become --KEY VALUE; the built image replaces IMAGE or follows the flags."""
    build = Build("ctx", ("file=Dockerfile.dev", "build-arg=A=1"))
    assert build.build_args("/tmp/iid") == [
        "build",
        "--iidfile",
        "/tmp/iid",
        "--file",
        "Dockerfile.dev",
        "--build-arg",
        "A=1",
        "ctx",
    ]
    with pytest.raises(CLIError, match="expected KEY=VALUE"):
        Build("ctx", ("nokey",)).build_args("/tmp/iid")
    assert with_built_image(["-v", "/a:/b", "IMAGE", "ls", "/"], "sha256:x", False) == [
        "-v",
        "/a:/b",
        "--",
        "sha256:x",
        "ls",
        "/",
    ]
    assert with_built_image(["--rm"], "sha256:x", False) == ["--rm", "--", "sha256:x"]
    assert with_built_image(["-t", "cat", "/f"], "sha256:x", True) == [
        "--security-opt",
        "apparmor=unconfined",
        "--cap-add",
        "SYS_PTRACE",
        "-t",
        "--",
        "sha256:x",
        "cat",
        "/f",
    ]


def test_engage_docker_build_runs_the_built_image(world: World) -> None:
    """docker build first, then the engagement runs the built image with its volumes."""
    cli = FakeDockerCLI(world)
    r = runner(world, cli)
    code = r.engage(
        None, "10.96.0.20:8022", "echo", ["/data"], ["IMAGE", "ls"], Build("ctx", ("file=D",))
    )
    assert code == 0
    assert cli.commands[0][:3] == ["docker", "build", "--iidfile"]
    assert cli.commands[0][-3:] == ["--file", "D", "ctx"]
    create = cli.commands[1]
    assert create[1] == "create" and create[-2:] == ["sha256:built", "ls"]
    assert "echo-0:/data:nocopy" in create and "SYS_PTRACE" not in create
    assert cli.mounted_while_running == ["echo-0"]
    assert world.docker.volumes_by_name == {}


def test_engage_docker_debug_adds_debugger_options(world: World) -> None:
    cli = FakeDockerCLI(world)
    assert (
        runner(world, cli).engage(None, "10.96.0.20:8022", "echo", [], [], Build("ctx", debug=True))
        == 0
    )
    create = cli.commands[1]
    assert create[create.index("--security-opt") + 1] == "apparmor=unconfined"
    assert create[create.index("--cap-add") + 1] == "SYS_PTRACE"
    assert create[-1] == "sha256:built"


def test_engage_docker_build_failure_makes_nothing(world: World) -> None:
    """A failed build is an error before any bridge, volume or container; bad args before it."""
    cli = FakeDockerCLI(world)
    with pytest.raises(CLIError, match="docker build of bad-context failed"):
        runner(world, cli).engage(
            None, "10.96.0.20:8022", "echo", ["/data"], [], Build("bad-context")
        )
    assert [c[1] for c in cli.commands] == ["build"]
    assert world.docker.volumes_by_name == {}
    with pytest.raises(CLIError, match="flag needs an argument"):
        runner(world, cli).engage(None, "10.96.0.20:8022", "echo", [], ["-v"], Build("ctx"))
    assert len(cli.commands) == 1


def test_curl_runs_the_curl_image(world: World) -> None:
    """curl runs on the connection's network with the daemon as DNS; its exit code is ours."""
    world.docker.images.add("curlimages/curl")
    cli = FakeDockerCLI(world, exit_code=6)
    assert runner(world, cli).curl(None, ["-sS", "http://echo/"]) == 6
    dns = world.connector.find("blue").dns_ip()
    assert cli.commands[0] == [
        "docker",
        "create",
        "--dns",
        dns,
        "--dns-search",
        "default.svc.cluster.local",
        "--dns-search",
        "svc.cluster.local",
        "--dns-search",
        "cluster.local",
        "--dns-search",
        "tel2-search",
        "--rm",
        "--entrypoint",
        "curl",
        "curlimages/curl",
        "-sS",
        "http://echo/",
    ]
    assert ("connect", "blue", "w1", None) in world.docker.calls
    world.docker.images.add("telenet/curl")
    cli = FakeDockerCLI(world)
    assert runner(world, cli).curl(None, ["http://echo/"]) == 0
    assert "telenet/curl" in cli.commands[0]


def test_curl_image_is_configurable_and_missing_one_says_how() -> None:
    world = World(Config(curl_image="my/curl:1", path="/etc/telenet.yml"))
    world.connect("blue")
    cli = FakeDockerCLI(world)
    with pytest.raises(CLIError) as e:
        runner(world, cli).curl(None, ["http://echo/"])
    message = str(e.value)
    assert "tried my/curl:1" in message and "curlimages" not in message
    assert (
        "docker build -t my/curl:1" in message and "docker.curlImage in /etc/telenet.yml" in message
    )
    assert cli.commands == []
    world.docker.images.add("my/curl:1")
    assert runner(world, cli).curl(None, ["http://echo/"]) == 0
    assert "my/curl:1" in cli.commands[0]
    default = World()
    default.connect("blue")
    with pytest.raises(CLIError, match="tried telenet/curl, curlimages/curl"):
        runner(default, FakeDockerCLI(default)).curl(None, ["http://echo/"])


def test_engage_mounts_telemount_volumes_without_copy_up(world: World) -> None:
    """
    The engagement's volumes and the user's mounts of telemount volumes say nocopy, whatever
    their syntax; a local volume keeps Docker's copy-up.
    """
    world.docker.create_volume("mine", "telenet/telemount:latest", {}, {})
    world.docker.create_volume("other", "telenet/telemount:latest", {}, {})
    world.docker.create_volume("cache", "local", {}, {})
    cli = FakeDockerCLI(world)
    runner(world, cli).engage(
        None,
        "10.96.0.20:8022",
        "echo",
        ["/etc"],
        [
            "-v",
            "mine:/mine:ro",
            "--mount=type=volume,src=other,dst=/other",
            "-v",
            "cache:/cache",
            "local/busybox",
        ],
    )
    create = cli.commands[0]
    assert create[create.index("--rm") :] == [
        "--rm",
        "-v",
        "echo-0:/etc:nocopy",
        "-v",
        "mine:/mine:ro,nocopy",
        "--mount=type=volume,src=other,dst=/other,volume-nocopy",
        "-v",
        "cache:/cache",
        "local/busybox",
    ]


def test_engage_waits_for_an_agent_that_starts_late(world: World) -> None:
    """
    The probe is tried again, with growing delays, while the agent does not answer, within
    intercept.mountTimeout: an agent that answers after 2 s is engaged.
    """
    tries: list[float] = []

    def probe(host: str, port: int, agent: str) -> None:
        tries.append(world.clock.now)
        if world.clock.now < 2.0:
            raise CLIError(
                f"agent {agent} is unreachable from the daemon (it closed the connection)"
            )

    code = runner(world, FakeDockerCLI(world), probe).engage(
        None, "10.96.0.20:8022", "echo", ["/a"], ["local/busybox"]
    )
    assert code == 0
    gaps = [round(b - a, 3) for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps == [0.4, 0.64, 1.024] and tries[-1] >= 2.0
    assert world.docker.volumes_by_name == {} and world.control.bridges == {}


def test_engage_gives_up_on_an_agent_after_the_mount_timeout() -> None:
    """An agent that never answers: one line with its address and the wait, nothing left."""
    world = World(Config(mount_timeout=3.0))
    world.connect("blue")
    tries: list[float] = []

    def probe(host: str, port: int, agent: str) -> None:
        tries.append(world.clock.now)
        raise CLIError(f"agent {agent} is unreachable from the daemon (it closed the connection)")

    with pytest.raises(CLIError) as raised:
        runner(world, FakeDockerCLI(world), probe).engage(
            None, "10.9.9.9:8022", "echo", ["/a"], ["local/busybox"]
        )
    assert str(raised.value) == (
        "agent 10.9.9.9:8022 is unreachable from the daemon (it closed the connection), "
        "tried for 3 s"
    )
    assert len(tries) > 2 and tries[-1] <= 3.0
    assert world.docker.volumes_by_name == {} and world.control.bridges == {}
