# -*- test-case-name: tests.test_mounter -*-
"""
The real ``IMounter``: one ``telenet.fuse.helper`` helper process per SFTP server.

pyfuse3 serves one mount per process, so each SFTP server (host, port) gets a helper process
that mounts it under ``<mount-root>/<host>/<port>`` and shows each volume as a directory there.
The plug-in talks to a helper over its control socket (newline-delimited JSON, the schema in
``telenet.fuse.protocol``). Helpers run in their own session and outlive a crashed plug-in, so the
containers using their volumes keep working; the next plug-in adopts them through their sockets.

A volume's ``wait`` (its ``timeout`` option) is how long the first connection to a server that
does not answer yet is retried, both the plug-in's TCP ping and the helper's SFTP connection,
with ``telenet.core.reconnect.Reconnector`` and the SFTP client's backoff: an agent whose pod
is still starting is waited for, and a volume never mounts empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from telenet.core.dockerplugin import PluginError
from telenet.core.interfaces import IMounter, VolumeSpec
from telenet.core.reactor import IReactor
from telenet.core.reconnect import GaveUp, Reconnector, RetryPolicy
from telenet.fuse.protocol import (
    AddVolume,
    ProtocolError,
    Refused,
    RemoveVolume,
    RequestFor,
    Shutdown,
    Status,
    StatusReport,
    encode,
    parse_line,
)

log = Logger()

_A = TypeVar("_A")

#: Seconds a helper gets to start (connect and mount) beyond the SFTP timeout.
START_GRACE = 10.0
#: Seconds a helper gets to unmount and exit after being asked to.
STOP_GRACE = 5.0
#: Seconds a control request may take.
CONTROL_TIMEOUT = 15.0
#: Seconds the plug-in waits, when it stops, for the helpers it stopped to exit.
EXIT_GRACE = 1.0


class ControlUnavailable(Exception):
    """No helper answers on the control socket."""


class _ControlClient(LineOnlyReceiver, Generic[_A]):
    delimiter = b"\n"
    MAX_LENGTH = 4 * 1024 * 1024

    def __init__(self, request: RequestFor[_A]) -> None:
        self.request = request
        self.answer: defer.Deferred[_A | Refused] = defer.Deferred()

    def connectionMade(self) -> None:
        self.sendLine(encode(self.request))

    def lineReceived(self, line: bytes) -> None:
        try:
            reply = self.request.answer_from_json(parse_line(line))
        except ProtocolError as e:
            self._finish(Failure(ControlUnavailable(f"bad control answer: {e}")))
        else:
            self._finish(reply)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._finish(Failure(ControlUnavailable("control connection closed without an answer")))

    def _finish(self, result: _A | Refused | Failure) -> None:
        if self.answer.called:
            return
        if isinstance(result, Failure):
            self.answer.errback(result)
        else:
            self.answer.callback(result)


async def control_request(
    reactor: IReactor, path: str, request: RequestFor[_A], timeout: float = CONTROL_TIMEOUT
) -> _A | Refused:
    """Send one request to a helper's control socket and return its answer."""
    client = _ControlClient(request)
    try:
        await connectProtocol(UNIXClientEndpoint(reactor, path, timeout=5), client)
    except (error.ConnectError, OSError) as e:
        raise ControlUnavailable(f"no helper at {path}: {e}") from e
    try:
        return await client.answer.addTimeout(timeout, reactor)
    except defer.TimeoutError as e:
        raise ControlUnavailable(f"helper at {path} did not answer in {timeout:g}s") from e


async def helper_status(
    reactor: IReactor, path: str, timeout: float = CONTROL_TIMEOUT
) -> StatusReport:
    """The status of the helper at ``path``; one that refuses to give it counts as absent."""
    answer = await control_request(reactor, path, Status(), timeout)
    if isinstance(answer, Refused):
        raise ControlUnavailable(f"helper at {path} refused its status: {answer.error}")
    return answer


class _HelperProcess(protocol.ProcessProtocol):
    """Reads a starting helper's one-line report; notes when the helper ends."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ready: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        self._out += data
        if b"\n" in self._out and not self.ready.called:
            line = self._out.split(b"\n", 1)[0]
            try:
                report = json.loads(line)
                if not isinstance(report, dict):
                    raise ValueError("not an object")
            except ValueError:
                report = {"error": f"mount helper said: {line[:300].decode('utf-8', 'replace')}"}
            self.ready.callback(report)

    def errReceived(self, data: bytes) -> None:
        self._err = (self._err + data)[-4000:]

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        if not self.ready.called:
            tail = self._err.decode("utf-8", "replace").strip().splitlines()[-3:]
            self.ready.callback(
                {
                    "error": f"the mount helper for {self.label} exited "
                    f"(code {code}) before mounting: {' / '.join(tail)}"
                }
            )
        log.info("mount helper for {label} ended with code {code}", label=self.label, code=code)
        self.ended.callback(None)


class _Server:
    def __init__(self, host: str, port: int, mountpoint: str, control: str, log_file: str):
        self.host = host
        self.port = port
        self.mountpoint = mountpoint
        self.control = control
        self.log_file = log_file
        self.lock = defer.DeferredLock()
        self.process: _HelperProcess | None = None

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def host_dir_name(host: str) -> str:
    """A directory name for ``host``: the Go plug-in's safe name, made unique when it changed."""
    from telenet.core.gocompat import safe_name

    safe = safe_name(host)
    if safe == host:
        return safe
    return f"{safe}-{hashlib.sha256(host.encode()).hexdigest()[:8]}"


def is_mounted(path: str) -> bool:
    """Whether ``path`` is a mount point, read from /proc (never touching a FUSE mount)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and _unescape(fields[4]) == path:
                    return True
    except OSError:
        pass
    return False


def _unescape(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


@implementer(IMounter)
class ProcessMounter:
    """Mounts each SFTP server with a ``python -m telenet.fuse.helper`` helper."""

    def __init__(
        self,
        reactor: IReactor,
        mount_root: str,
        state_dir: str,
        timeout: float = 10.0,
        helper: list[str] | None = None,
        ping_timeout: float = 1.0,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self._reactor = reactor
        self.mount_root = mount_root
        self.state_dir = state_dir
        self.timeout = timeout
        self.ping_timeout = ping_timeout
        from telenet.sftp.connection import defaultRetryPolicy

        self.retry_policy: RetryPolicy = retry_policy or defaultRetryPolicy
        self._helper = helper or [sys.executable, "-m", "telenet.fuse.helper"]
        self._servers: dict[tuple[str, int], _Server] = {}

    def _server(self, host: str, port: int) -> _Server:
        key = (host, port)
        server = self._servers.get(key)
        if server is None:
            name = f"{host_dir_name(host)}-{port}"
            server = _Server(
                host,
                port,
                mountpoint=os.path.join(self.mount_root, host_dir_name(host), str(port)),
                control=os.path.join(self.state_dir, f"{name}.sock"),
                log_file=os.path.join(self.state_dir, f"{name}.log"),
            )
            self._servers[key] = server
        return server

    def mountpoint(self, host: str, port: int, name: str) -> str:
        return os.path.join(self._server(host, port).mountpoint, name)

    def attach(self, volume: VolumeSpec) -> defer.Deferred[str]:
        return defer.ensureDeferred(self._attach(volume))

    async def _attach(self, volume: VolumeSpec) -> str:
        server = self._server(volume.host, volume.port)
        request = AddVolume(
            name=volume.name,
            path=volume.remote_dir,
            ro=volume.ro,
            uid=volume.uid,
            gid=volume.gid,
            umask=volume.umask,
        )
        async with server.lock:
            try:
                reply = await control_request(self._reactor, server.control, request)
            except ControlUnavailable:
                await self._start(server, volume.wait)
                reply = await control_request(self._reactor, server.control, request)
        if isinstance(reply, Refused):
            raise PluginError(reply.error or f"mounting {volume.name} failed")
        return self.mountpoint(volume.host, volume.port, volume.name)

    async def _start(self, server: _Server, wait: float = 0.0) -> None:
        """
        Start a helper for ``server``, clearing what a dead one left behind; the first
        connection is retried for ``wait`` seconds, the ping's and the helper's together.
        """
        # A quick ping first, as the Go plug-in does: an absent server is reported in
        # ping_timeout rather than after the helper's whole connect timeout.
        wait = await self._ping(server, wait)
        await self._clear_leftovers(server)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        os.makedirs(server.mountpoint, exist_ok=True)
        helper = _HelperProcess(server.label)
        args = [
            *self._helper,
            "--host",
            server.host,
            "--port",
            str(server.port),
            "--mountpoint",
            server.mountpoint,
            "--control",
            server.control,
            "--log-file",
            server.log_file,
            "--timeout",
            f"{self.timeout:g}",
        ]
        if wait > 0:
            args += ["--wait", f"{wait:g}"]
        log.info("starting mount helper for {label}", label=server.label)
        transport = self._reactor.spawnProcess(helper, args[0], args, env=dict(os.environ))
        server.process = helper
        helper.ended.addCallback(lambda _: _forget(server, helper))
        try:
            limit = wait + self.timeout + START_GRACE
            report = await helper.ready.addTimeout(limit, self._reactor)
        except defer.TimeoutError:
            _signal(transport, signal.SIGKILL)
            raise PluginError(
                f"timed out mounting the SFTP server at {server.label} ({limit:g}s)"
            ) from None
        if not report.get("ready"):
            raise PluginError(str(report.get("error") or f"cannot mount {server.label}"))
        transport.closeStdout()

    async def _ping(self, server: _Server, wait: float) -> float:
        """
        Wait for ``server`` to accept a TCP connection, retrying for ``wait`` seconds (one try
        without); the seconds of ``wait`` left. PluginError naming the server when it does not.
        """
        started = self._reactor.seconds()

        async def once() -> bool:
            problem = await _tcp_problem(self._reactor, server.host, server.port, self.ping_timeout)
            if problem is not None:
                raise ConnectionError(problem)
            return True

        link: Reconnector[bool] = Reconnector(
            lambda: defer.ensureDeferred(once()), self._reactor, self.retry_policy
        )
        waiting = link.wait(fail_after=1) if wait <= 0 else link.wait(until=started + wait)
        link.start()
        try:
            await waiting
        except GaveUp as e:
            tried = f" (tried for {wait:g}s)" if wait > 0 else ""
            raise PluginError(f"cannot reach SFTP server at {server.label}: {e}{tried}") from None
        finally:
            link.stop()
        return max(0.0, started + wait - self._reactor.seconds())

    async def _clear_leftovers(self, server: _Server) -> None:
        if is_mounted(server.mountpoint):
            log.warn("removing the stale mount at {path}", path=server.mountpoint)
            await _lazy_unmount(self._reactor, server.mountpoint)
        if os.path.exists(server.control):
            os.unlink(server.control)

    def detach(self, host: str, port: int, name: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._detach(host, port, name))

    async def _detach(self, host: str, port: int, name: str) -> None:
        server = self._server(host, port)
        async with server.lock:
            try:
                await control_request(self._reactor, server.control, RemoveVolume(name))
                status = await helper_status(self._reactor, server.control)
            except ControlUnavailable:
                await self._clear_leftovers(server)
                return
            if not status.volumes:
                await self._stop(server)

    async def _stop(self, server: _Server) -> None:
        """Ask the helper to unmount and exit; make sure of it if it does not."""
        try:
            await control_request(self._reactor, server.control, Shutdown(), timeout=STOP_GRACE)
        except ControlUnavailable as e:
            log.warn(
                "helper for {label} did not take shutdown: {error}", label=server.label, error=e
            )
        for _ in range(int(STOP_GRACE / 0.1)):
            if not is_mounted(server.mountpoint) and not os.path.exists(server.control):
                break
            await _sleep(self._reactor, 0.1)
        else:
            log.warn("helper for {label} still mounted after shutdown; forcing", label=server.label)
            pid = await self._pid(server)
            if pid:
                _kill(pid)
            await self._clear_leftovers(server)
        try:
            os.rmdir(server.mountpoint)
        except OSError:
            pass

    async def _pid(self, server: _Server) -> int | None:
        try:
            return (await helper_status(self._reactor, server.control, timeout=2)).pid
        except ControlUnavailable:
            return None

    def status(self, host: str, port: int) -> defer.Deferred[dict[str, Any]]:
        return defer.ensureDeferred(self._status(host, port))

    async def _status(self, host: str, port: int) -> dict[str, Any]:
        server = self._server(host, port)
        try:
            status = await helper_status(self._reactor, server.control)
        except ControlUnavailable:
            return {"mounted": False, "connected": False}
        return {"mounted": True, **status.to_json()}

    def release(self, host: str, port: int) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop_locked(self._server(host, port)))

    def reachable(self, host: str, port: int, timeout: float) -> defer.Deferred[bool]:
        async def check() -> bool:
            return await _tcp_problem(self._reactor, host, port, timeout) is None

        return defer.ensureDeferred(check())

    def adopt(
        self, expected: Mapping[tuple[str, int], Mapping[str, tuple[str, bool]]]
    ) -> defer.Deferred[None]:
        """
        Take over the helpers a previous plug-in left running.

        ``expected`` maps each server to the volumes it should serve (name → remote dir, ro).
        Helpers with nothing expected are stopped, volumes nobody knows are withdrawn, and
        dead helpers' mounts are cleared. Missing volumes are added on their next Mount.
        """
        return defer.ensureDeferred(self._adopt(expected))

    async def _adopt(
        self, expected: Mapping[tuple[str, int], Mapping[str, tuple[str, bool]]]
    ) -> None:
        for server in await self._running_helpers():
            wanted = expected.get((server.host, server.port), {})
            async with server.lock:
                try:
                    status = await helper_status(self._reactor, server.control)
                except ControlUnavailable:
                    await self._clear_leftovers(server)
                    continue
                if not wanted:
                    await self._stop(server)
                    continue
                for name in status.volumes:
                    if name not in wanted:
                        await control_request(self._reactor, server.control, RemoveVolume(name))
                log.info("adopted mount helper for {label}", label=server.label)

    async def _running_helpers(self) -> list[_Server]:
        """Servers whose helper socket exists in the state directory."""
        found = []
        try:
            names = sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            return []
        for entry in names:
            if not entry.endswith(".sock"):
                continue
            path = os.path.join(self.state_dir, entry)
            try:
                status = await helper_status(self._reactor, path, timeout=5)
                found.append(self._server(status.host, status.port))
            except ControlUnavailable:
                log.warn("removing dead helper socket {path}", path=path)
                os.unlink(path)
        return found

    def shutdown(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._shutdown())

    async def _shutdown(self) -> None:
        servers = await self._running_helpers()
        results = await defer.DeferredList(
            [defer.ensureDeferred(self._stop_locked(s)) for s in servers], consumeErrors=True
        )
        for ok, result in results:
            if not ok:
                log.failure("stopping a mount helper failed", result)
        # The helpers this plug-in started are its children, and none may outlive it. Those
        # just stopped have unmounted and are exiting. One still starting (for a Create or
        # Mount the plug-in stopped waiting for) would go on until its own timeout: it is
        # killed, and whatever it mounted is cleared.
        running = {id(s) for s in servers}
        children = [s for s in self._servers.values() if s.process is not None]
        starting = [s for s in children if id(s) not in running]
        for server in starting:
            assert server.process is not None
            log.warn("stopping the mount helper for {label}, still starting", label=server.label)
            _signal(server.process.transport, signal.SIGKILL)
        ending = [_observe(s.process.ended) for s in children if s.process is not None]
        if ending:
            waiting = defer.DeferredList(ending, consumeErrors=True)
            try:
                await waiting.addTimeout(EXIT_GRACE, self._reactor)
            except defer.TimeoutError:
                log.warn(
                    "{n} mount helper(s) still running at shutdown",
                    n=sum(1 for s in children if s.process is not None),
                )
        for server in starting:
            await self._clear_leftovers(server)

    async def _stop_locked(self, server: _Server) -> None:
        async with server.lock:
            await self._stop(server)


async def _tcp_problem(reactor: IReactor, host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails within ``timeout``, or None when it succeeds."""
    from twisted.internet.endpoints import HostnameEndpoint

    endpoint = HostnameEndpoint(reactor, host, port, timeout=max(timeout, 0.1))
    attempt = connectProtocol(endpoint, protocol.Protocol())
    try:
        connected = await attempt.addTimeout(timeout + 0.5, reactor)
    except defer.TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as e:  # every way a connect can fail is an answer here
        return str(getattr(e, "osError", None) or e).strip() or type(e).__name__
    connected.transport.loseConnection()
    return None


def _observe(d: defer.Deferred[None]) -> defer.Deferred[None]:
    """A new Deferred that fires when ``d`` does; cancelling it leaves ``d`` alone."""
    observer: defer.Deferred[None] = defer.Deferred()

    def fired(result: object) -> object:
        if not observer.called:
            observer.callback(None)
        return result

    d.addBoth(fired)
    return observer


def _forget(server: _Server, helper: _HelperProcess) -> None:
    if server.process is helper:
        server.process = None


def _signal(transport: Any, sig: int) -> None:
    try:
        transport.signalProcess(sig)
    except error.ProcessExitedAlready:
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _sleep(reactor: IReactorTime, seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


async def _lazy_unmount(reactor: IReactorProcess, path: str) -> None:
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(
        "fusermount3", ["-uz", path], env=dict(os.environ), reactor=reactor
    )
    if code != 0 and is_mounted(path):
        out, err, code = await getProcessOutputAndValue(
            "umount", ["-l", path], env=dict(os.environ), reactor=reactor
        )
        if code != 0:
            log.error(
                "could not unmount {path}: {err}",
                path=path,
                err=err.decode("utf-8", "replace").strip(),
            )
