# -*- test-case-name: tests.test_cli_runner -*-
"""
``telenet docker-run`` and ``telenet engage --docker-run`` (docs/cli.md, "docker-run and engage").

A workload is made the way Telepresence makes it since PR #3905, so that ``-p`` and extra
networks keep working: ``docker create --dns <daemon's teleroute address> ARGS``, then
``NetworkConnect(<connection's network>)``, then ``docker start --attach``. The docker CLI does
the create and start (it knows every ``docker run`` flag); arguments are passed as lists.

Signals: without ``-t``, SIGINT, SIGTERM and SIGHUP stop the container (a shell as PID 1 ignores
the forwarded SIGINT); with ``-t`` the terminal sends them to the container itself. The
container's exit code becomes ours.

An engagement adds: an SFTP bridge from the daemon to the agent, one telemount volume per
remote mount (``<container>-<i>``), the user's ``-v``/``--mount`` targets winning, ``--rm``,
and, however it ends, the container stopped, the volumes removed and the bridge closed.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from telenet.cli.connection import CLIError, Connection
from telenet.cli.connector import Connector
from telenet.cli.dockerapi import DockerError
from telenet.cli.naming import LABEL_CONNECTION
from telenet.cli.runflags import (
    RemoteMount,
    RunArgs,
    RunFlagsError,
    merge_remote_mounts,
    parse_run_args,
    volume_spec,
    with_nocopy,
)
from telenet.cli.workload import (
    WorkloadDNS,
    bridge_host,
    check_agent,
    check_container,
    close_bridge,
    mount_options,
    open_bridge,
    patient,
    telemount_options,
    teleroute_network,
    volume_driver,
    volume_wait,
    workload_dns,
)

# Flags of `docker run` that `docker create` does not take: -d is telenet's to honour;
# `docker start --attach` always proxies signals, and telenet stops the container on them.
_RUN_ONLY = ("detach", "sig-proxy")


#: What ``--docker-debug`` adds to the container (Telepresence's debug mode).
DEBUG_FLAGS = ("--security-opt", "apparmor=unconfined", "--cap-add", "SYS_PTRACE")

#: The curl images ``telenet curl`` looks for when ``docker.curlImage`` is not set.
DEFAULT_CURL_IMAGES = ("telenet/curl", "curlimages/curl")

#: How to make a curl image locally (apt inside the build; no registry needed but Debian's).
CURL_DOCKERFILE = (
    "FROM debian:bookworm-slim\n"
    "RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates"
    " && rm -rf /var/lib/apt/lists/*\n"
)

#: The placeholder of the built image in the docker run arguments of ``--docker-build``.
IMAGE_PLACEHOLDER = "IMAGE"


@attrs.frozen
class Build:
    """``--docker-build CONTEXT [--docker-build-opt KEY=VALUE ...]`` or ``--docker-debug``."""

    context: str
    options: tuple[str, ...] = ()
    debug: bool = False

    def build_args(self, iidfile: str) -> list[str]:
        """The ``docker build`` argument list (after ``docker``); each KEY=VALUE is --KEY VALUE."""
        args = ["build", "--iidfile", iidfile]
        for option in self.options:
            key, eq, value = option.partition("=")
            key = key.lstrip("-")
            if not eq or not key:
                raise CLIError(
                    f"--docker-build-opt {option!r}: expected KEY=VALUE, e.g. file=Dockerfile"
                )
            args += [f"--{key}", value]
        args.append(self.context)
        return args


def with_built_image(args: Sequence[str], image: str, debug: bool) -> list[str]:
    """
    The docker run arguments with the built image: it replaces an ``IMAGE`` placeholder where
    the image goes, and is otherwise put after the flags (what follows is the command).
    """
    run = parse_run_args(args)
    tokens = run.option_tokens()
    if debug:
        tokens = [*DEBUG_FLAGS, *tokens]
    if run.image == IMAGE_PLACEHOLDER:
        return [*tokens, "--", image, *run.command]
    return [*tokens, "--", image, *run.tail()]


@attrs.frozen
class CreatePlan:
    """The ``docker create`` arguments of a workload and how to start it."""

    create_args: list[str]
    detach: bool
    tty: bool
    interactive: bool
    remove: bool = False


def plan_create(
    run: RunArgs,
    dns: WorkloadDNS | str,
    extra_volumes: Sequence[str] = (),
    force_rm: bool = False,
) -> CreatePlan:
    """
    The ``docker create`` argument list (after ``docker``) for ``docker run`` arguments; ``dns``
    is the connection's ``workload_dns`` (a string: that one server).
    """
    if isinstance(dns, str):
        dns = WorkloadDNS(servers=(dns,))
    if run.image is None:
        raise CLIError("an image is required: docker run [OPTIONS] IMAGE [COMMAND] [ARG...]")
    detach = run.boolean("detach")
    if force_rm and detach:
        raise CLIError("an engagement runs attached: drop -d/--detach")
    args = ["create", *dns.create_flags()]
    if force_rm and not run.boolean("rm"):
        args.append("--rm")
    for volume in extra_volumes:
        args += ["-v", volume]
    args += run.option_tokens(drop=_RUN_ONLY)
    args += run.tail()
    return CreatePlan(
        create_args=args,
        detach=detach,
        tty=run.boolean("tty"),
        interactive=run.boolean("interactive"),
        remove=force_rm or run.boolean("rm"),
    )


@contextmanager
def _signals_stop(callback: Callable[[int], None], signals: Sequence[int]) -> Iterator[None]:
    """Call ``callback`` (in a thread) on the first of ``signals``; restore handlers after."""
    fired = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if not fired.is_set():
            fired.set()
            threading.Thread(target=callback, args=(signum,), daemon=True).start()

    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:
        # Not the main thread (tests): no signal handling.
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@attrs.define
class WorkloadRunner:
    """I run workloads on a connection's network."""

    connector: Connector
    docker_cli: str = "docker"
    say: Callable[[str], None] = print
    stop_timeout: float = 10.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    run_process: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
    popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen
    probe: Callable[[str, int, str], None] = attrs.field(default=attrs.Factory(lambda: probe_agent))

    @property
    def docker(self) -> Any:
        return self.connector.docker

    def _connection(self, name: str | None) -> Connection:
        self.connector.check_docker()
        conn = self.connector.find(name)
        if not conn.running:
            raise CLIError(
                f"the daemon of {conn.name} is not running: run telenet connect "
                f"--docker --name {conn.name} again"
            )
        if conn.network is None or not workload_dns(conn).servers:
            raise CLIError(
                f"the daemon is not on network {conn.name}: run telenet connect "
                f"--docker --name {conn.name} again"
            )
        return conn

    def docker_run(self, name: str | None, args: Sequence[str]) -> int:
        """``telenet docker-run ARGS``: the container's exit code (125 if it was not made)."""
        try:
            run = parse_run_args(args)
        except RunFlagsError as e:
            raise CLIError(str(e)) from None
        conn = self._connection(name)
        plan = plan_create(run, workload_dns(conn))
        return self._run(conn, plan)

    def curl_image(self) -> str:
        """The configured curl image, or the first default one present; CLIError otherwise."""
        config = self.connector.config
        tried = [config.curl_image] if config.curl_image else list(DEFAULT_CURL_IMAGES)
        for image in tried:
            if self.docker.image_exists(image):
                return image
        where = config.path or "config.yml"
        dockerfile = CURL_DOCKERFILE.replace("\n", "\\n")
        raise CLIError(
            f"no curl image: tried {', '.join(tried)} (none is present locally); make one, e.g. "
            f"printf '{dockerfile}' | docker build -t {tried[0]} -  "
            f"(or pull one, or set docker.curlImage in {where})"
        )

    def curl(self, name: str | None, args: Sequence[str]) -> int:
        """``telenet curl [curl args] URL``: curl on the connection's network; curl's exit code."""
        conn = self._connection(name)
        image = self.curl_image()
        run = parse_run_args(["--rm", "--entrypoint", "curl", image, *args])
        return self._run(conn, plan_create(run, workload_dns(conn)))

    def _run(self, conn: Connection, plan: CreatePlan) -> int:
        created = self.run_process(
            [self.docker_cli, *plan.create_args], stdout=subprocess.PIPE, text=True
        )
        if created.returncode != 0:
            # docker printed why on our stderr.
            return created.returncode or 125
        lines = created.stdout.strip().splitlines()
        if not lines:
            raise CLIError("docker create printed no container id")
        container = lines[-1].strip()
        try:
            self.docker.connect(teleroute_network(conn), container, None)
        except DockerError as e:
            if "already exists" not in str(e):
                self.docker.remove_container(container)
                raise CLIError(
                    f"could not connect the container to network {teleroute_network(conn)}: {e}"
                ) from None
        if plan.detach:
            started = self.run_process([self.docker_cli, "start", container])
            if started.returncode != 0:
                self.docker.remove_container(container)
                return started.returncode or 125
            print(container, flush=True)
            return 0
        try:
            return self._attach(container, plan)
        finally:
            if plan.remove:
                # --rm removes a container that ran; one that failed to start stays "created".
                self.docker.remove_container(container)

    def _attach(self, container: str, plan: CreatePlan) -> int:
        command = [self.docker_cli, "start", "--attach"]
        if plan.interactive:
            command.append("--interactive")
        command.append(container)

        def stop(signum: int) -> None:
            self.docker.stop_container(container, self.stop_timeout)

        # With a tty, ^C is a byte for the container; SIGTERM/SIGHUP still stop it.
        signals = [signal.SIGTERM, signal.SIGHUP]
        if not plan.tty:
            signals.append(signal.SIGINT)
        try:
            with _signals_stop(stop, signals):
                proc = self.popen(command)
                while True:
                    try:
                        code = proc.wait()
                        break
                    except KeyboardInterrupt:
                        continue
        except BaseException:
            self.docker.stop_container(container, self.stop_timeout)
            raise
        return code

    # -- engagements

    def engage(
        self,
        name: str | None,
        agent: str,
        container: str,
        remote_mounts: Sequence[str],
        args: Sequence[str],
        build: Build | None = None,
        mount_opts: Sequence[str] = (),
    ) -> int:
        """
        ``telenet engage … --docker-run|--docker-build C|--docker-debug C -- ARGS``: the
        container's exit code. With ``build``, the image built from its context is the run's;
        ``mount_opts`` (``KEY=VALUE``) go to every telemount volume it creates.
        """
        owner = mount_options(mount_opts)
        try:
            if build is not None:
                # Checked with a stand-in image before anything is built.
                with_built_image(args, "sha256:0", build.debug)
                build.build_args("iidfile")
            run = parse_run_args(args)
            mounts = [RemoteMount.parse(m) for m in remote_mounts]
            user_mounts = run.mounts()
        except RunFlagsError as e:
            raise CLIError(str(e)) from None
        check_container(container)
        check_agent(agent)
        conn = self._connection(name)
        if build is not None:
            image = self.build_image(build)
            run = parse_run_args(with_built_image(args, image, build.debug))
        run = self._nocopy(conn, run)
        kept, skipped = merge_remote_mounts(mounts, user_mounts)
        for mount in skipped:
            self.say(f"Skipping auto-mounting of {mount.path}: the docker run flags mount it")
        control = self.connector.control(conn)
        bridge: int | None = None
        volumes: list[str] = []
        try:
            extra: list[str] = []
            if kept:
                driver = volume_driver(
                    conn, lambda: self.connector.ensure_plugins(("telemount",))["telemount"]
                )
                host = bridge_host(conn)
                wait = self.connector.config.mount_timeout
                probe = patient(self.probe, wait, self.sleep, self.clock)
                bridge = open_bridge(control, agent, host, probe)
                wait = volume_wait(self.docker, driver, wait)
                for i, mount in enumerate(kept):
                    volume = self._volume_name(f"{container}-{i}", bridge, driver, conn.name)
                    options = telemount_options(
                        host, bridge, container, mount.path, mount.readonly, owner, wait
                    )
                    try:
                        self.docker.create_volume(
                            volume, driver, options, {LABEL_CONNECTION: conn.name}
                        )
                    except DockerError as e:
                        raise CLIError(
                            f"could not create volume {volume} of agent {agent}: {e}"
                        ) from None
                    volumes.append(volume)
                    extra.append(volume_spec(volume, mount.path, mount.readonly))
                self.sleep(self.connector.config.mount_completion_delay)
            plan = plan_create(run, workload_dns(conn), extra, force_rm=True)
            return self._run(conn, plan)
        finally:
            if volumes:
                # The --rm removal of the container, which frees the volumes, is asynchronous.
                self.sleep(0.2)
                for volume in volumes:
                    self.connector.teardown.remove_volume(volume)
            if bridge is not None:
                close_bridge(control, bridge, self.say)

    def _nocopy(self, conn: Connection, run: RunArgs) -> RunArgs:
        """``run`` with the user's mounts of telemount volumes made ``nocopy``."""
        named = {m.source for m in run.mounts() if m.kind == "volume" and m.source}
        if not named:
            return run
        driver = volume_driver(conn, lambda: self.connector.config.telemount.name)
        try:
            telemount = {v["Name"] for v in self.docker.volumes(driver)}
        except DockerError as e:
            raise CLIError(f"could not list the volumes of {driver}: {e}") from None
        return with_nocopy(run, named & telemount)

    def build_image(self, build: Build) -> str:
        """``docker build`` with its output on ours; the image id, or CLIError if it failed."""
        # docker build removes an existing --iidfile first: name one in a fresh directory.
        import tempfile

        with tempfile.TemporaryDirectory(prefix="telenet-build-") as tmp:
            iidfile = os.path.join(tmp, "iid")
            self.say(f"Building the image from {build.context}")
            built = self.run_process([self.docker_cli, *build.build_args(iidfile)])
            if built.returncode != 0:
                raise CLIError(
                    f"docker build of {build.context} failed (exit code {built.returncode})"
                )
            try:
                with open(iidfile) as f:
                    image = f.read().strip()
            except OSError:
                image = ""
        if not image:
            raise CLIError(f"docker build of {build.context} wrote no image id")
        return image

    def _volume_name(self, name: str, bridge: int, driver: str, connection: str) -> str:
        """
        Go's name ``<container>-<i>``, made free; while another engagement of this connection
        uses it (the same container engaged twice), ``<container>-<i>-<bridge port>``: the port
        is this engagement's own as long as it runs, so its volumes are its alone.
        """
        if self._fresh_volume(name, driver, connection):
            return name
        alternative = f"{name}-{bridge}"
        if not self._fresh_volume(alternative, driver, connection):
            raise CLIError(f"the volumes {name} and {alternative} are both in use")
        return alternative

    def _fresh_volume(self, volume: str, driver: str, connection: str) -> bool:
        """
        Make room for ``volume``: True when it is free or was a leftover of ours, False when
        another engagement of ours uses it; anyone else's is refused.
        """
        found = [v for v in self.docker.volumes(driver) if v["Name"] == volume]
        if not found:
            return True
        existing = found[0]
        if (existing.get("Labels") or {}).get(LABEL_CONNECTION) != connection:
            raise CLIError(
                f"a volume named {volume} exists and is not this engagement's: "
                "remove it or engage with another --container"
            )
        try:
            self.docker.remove_volume(volume)
        except DockerError:
            return False
        return True


_SFTP_INIT = struct.pack(">IBI", 5, 1, 3)
_SFTP_VERSION = 2


def probe_agent(host: str, port: int, agent: str, timeout: float = 6.0) -> None:
    """
    Send an SFTP INIT through the daemon's bridge and wait for VERSION: the bridge closes a
    connection whose agent it cannot reach, so this tells an unreachable agent apart before
    any volume exists (telemount would otherwise fail the container's start).
    """
    why = "it closed the connection"
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(_SFTP_INIT)
            header = b""
            while len(header) < 5:
                chunk = s.recv(5 - len(header))
                if not chunk:
                    break
                header += chunk
            if len(header) == 5 and header[4] == _SFTP_VERSION:
                return
            if len(header) == 5:
                why = f"it answered SFTP packet type {header[4]}, not VERSION"
    except TimeoutError:
        why = f"no answer within {timeout:.0f} s"
    except OSError as e:
        why = e.strerror or str(e)
    raise CLIError(f"agent {agent} is unreachable from the daemon ({why})")
