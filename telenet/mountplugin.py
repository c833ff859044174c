# -*- test-case-name: tests.test_mountplugin -*-
"""
``twistd telemount``: the Docker volume plug-in that mounts SFTP exports.

``docker volume create -d telemount -o host=H -o port=P -o container=C [-o dir=D] [-o ro=true]
[-o uid=U] [-o gid=G] [-o umask=M] [-o timeout=DURATION]`` names the directory
``/tel_app_exports/C/D`` on the raw SFTP server at H:P; ``uid``/``gid``/``umask`` are the owner
and mode mask its files show; ``timeout`` is how long the first connection is retried while
the server does not answer yet (an agent whose pod is starting; default: one try). This module
keeps the volumes (options, who uses them, persisted across restarts) and leaves the mounting
to an ``IMounter``: one FUSE helper process per SFTP server, shared by that server's volumes.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service, strports
from twisted.application.internet import TimerService
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from telenet.core import dockerplugin
from telenet.core.dockerplugin import BadRequest, JSONObject, PluginError, field, string_map
from telenet.core.gocompat import parse_bool, parse_duration
from telenet.core.interfaces import IMounter, IStateStore, VolumeSpec
from telenet.core.logoptions import LogOptionsMixin
from telenet.core.reactor import IReactor, global_reactor
from telenet.core.threads import state_thread
from telenet.core.volumeowner import parse_owner_options

log = Logger()

EXPORTS_ROOT = "/tel_app_exports"
DEFAULT_HOST = "localhost"
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")
_KNOWN_OPTIONS = ("container", "dir", "gid", "host", "port", "ro", "timeout", "uid", "umask")

Runner = Callable[..., "defer.Deferred[Any]"]


@attrs.frozen
class VolumeOptions:
    """The validated ``-o`` options of one volume."""

    host: str
    port: int
    container: str
    dir: str
    ro: bool
    # The owner and mode mask every file shows (None: the server's own).
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    #: Seconds the first connection is retried; not part of what makes two volumes the same.
    wait: float = attrs.field(default=0.0, eq=False)

    @property
    def remote_dir(self) -> str:
        """The volume's directory on the SFTP server."""
        return (
            posixpath.join(EXPORTS_ROOT, self.container, self.dir)
            if self.dir
            else (posixpath.join(EXPORTS_ROOT, self.container))
        )

    def spec(self, name: str) -> VolumeSpec:
        """Volume ``name`` with these options, as an ``IMounter`` takes it."""
        return VolumeSpec(
            host=self.host,
            port=self.port,
            name=name,
            remote_dir=self.remote_dir,
            ro=self.ro,
            uid=self.uid,
            gid=self.gid,
            umask=self.umask,
            wait=self.wait,
        )


def parse_options(opts: dict[str, str]) -> VolumeOptions:
    """
    Validate ``docker volume create`` options, with the Go plug-in's messages.

    Beyond it: ``dir`` may not climb out of the container's export, and ``container`` must be
    one path segment.
    """
    for key in sorted(opts):
        if key not in _KNOWN_OPTIONS:
            raise PluginError(f'illegal option "{key}"')
    container = opts.get("container", "")
    if not container:
        raise PluginError('missing required option "container"')
    if "/" in container or container in (".", "..") or "\0" in container:
        raise PluginError(
            f'container "{container}" is not a container name: it may not contain "/" '
            f'or be "." or ".."'
        )
    port_text = opts.get("port", "")
    if not port_text:
        raise PluginError('missing required option "port"')
    if not port_text.isdigit() or int(port_text) > 65535:
        raise PluginError("port must be an unsigned integer between 1 and 65535")
    port = int(port_text)
    if port == 0:
        raise PluginError('missing required option "port"')
    host = _check_host(opts.get("host") or DEFAULT_HOST)
    try:
        uid, gid, umask = parse_owner_options(opts)
    except ValueError as e:
        raise PluginError(str(e)) from None
    ro = False
    if "ro" in opts:
        try:
            ro = parse_bool(opts["ro"])
        except ValueError:
            raise PluginError("ro must be a boolean") from None
    return VolumeOptions(
        host=host,
        port=port,
        container=container,
        dir=_confined_dir(container, opts.get("dir", "")),
        ro=ro,
        uid=uid,
        gid=gid,
        umask=umask,
        wait=_wait(opts.get("timeout", "")),
    )


#: The longest first-connection wait a volume may ask for: Docker waits for the plug-in.
MAX_WAIT = 300.0


def _wait(text: str) -> float:
    """The ``timeout`` option: a Go duration (``5s``, ``1m``) or seconds; 0 when absent."""
    if not text:
        return 0.0
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise PluginError(f'timeout "{text}" is not a duration such as 10s or 1m30s') from None
    if not 0 <= seconds <= MAX_WAIT:
        raise PluginError(f"timeout must be between 0s and {MAX_WAIT:g}s")
    return seconds


def _check_host(host: str) -> str:
    """
    ``host`` as the helper connects to it: an address literal in its canonical text, an IPv6
    one with or without brackets (``fd00::2``, ``[fd00::2]``: one server, one mount), else a
    host name.
    """
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        address = None
    if address is not None and (address.version == 6 or not bracketed):
        return str(address)
    if bracketed or not _HOSTNAME.fullmatch(host):
        raise PluginError(
            f"failed to parse host address {host}: not an IPv4 or IPv6 address or a host name"
        )
    return host


def _confined_dir(container: str, directory: str) -> str:
    """``directory`` relative to the container's export, refusing any way out of it."""
    if "\0" in directory:
        raise PluginError("dir may not contain a NUL character")
    parts: list[str] = []
    for part in directory.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PluginError(
                    f'dir "{directory}" leaves the export of container "{container}" '
                    f"({EXPORTS_ROOT}/{container})"
                )
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


@attrs.define
class Volume:
    name: str
    options: VolumeOptions
    created_at: float
    used_by: list[str] = attrs.Factory(list)

    def to_json(self) -> JSONObject:
        return {
            "options": attrs.asdict(self.options),
            "created_at": self.created_at,
            "used_by": list(self.used_by),
        }

    @classmethod
    def from_json(cls, name: str, data: JSONObject) -> Volume:
        return cls(
            name=name,
            options=VolumeOptions(**data["options"]),
            created_at=float(data["created_at"]),
            used_by=list(data.get("used_by", [])),
        )


def _rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


class VolumeDriver:
    """
    Docker's VolumeDriver calls, over an ``IMounter`` and an ``IStateStore``.

    Every change is saved before Docker hears it succeeded, so nothing Docker was told is lost
    in a crash. Calls on one volume are serialised; calls on different volumes run side by side.
    """

    def __init__(
        self, mounter: IMounter, store: IStateStore, clock: IReactorTime, run_blocking: Runner
    ) -> None:
        self._mounter = mounter
        self._store = store
        self._clock = clock
        self._run_blocking = run_blocking
        self._locks: dict[str, defer.DeferredLock] = {}
        self.volumes: dict[str, Volume] = {}

    # -- persistence

    def restore(self) -> None:
        """Load the volumes saved by an earlier run; unreadable entries are logged and skipped."""
        data = self._store.load()
        for name, entry in (data.get("volumes") or {}).items():
            try:
                self.volumes[name] = Volume.from_json(name, entry)
            except (KeyError, TypeError, ValueError) as e:
                log.error("skipping unreadable saved volume {name}: {error}", name=name, error=e)
        log.info("restored {count} volumes", count=len(self.volumes))

    def expected_mounts(self) -> dict[tuple[str, int], dict[str, tuple[str, bool]]]:
        """What each SFTP server should serve, by the saved volumes (for ``IMounter.adopt``)."""
        expected: dict[tuple[str, int], dict[str, tuple[str, bool]]] = {}
        for volume in self.volumes.values():
            o = volume.options
            expected.setdefault((o.host, o.port), {})[volume.name] = (o.remote_dir, o.ro)
        return expected

    async def reap_disconnected(self, linger: float, ping_timeout: float) -> None:
        """
        Unmount servers that lost their connection over ``linger`` seconds ago, stay
        unreachable, and serve no container: the Go plug-in's linger. Their volumes stay;
        the next Mount mounts again.
        """
        now = self._clock.seconds()
        for (host, port), names in self.expected_mounts().items():
            if any(self.volumes[n].used_by for n in names):
                continue
            status = await self._mounter.status(host, port)
            if not status.get("mounted") or status.get("connected"):
                continue
            if now - float(status.get("since") or now) < linger:
                continue
            if await self._mounter.reachable(host, port, ping_timeout):
                continue
            log.info(
                "unmounting {host}:{port}: disconnected for over {linger}s",
                host=host,
                port=port,
                linger=linger,
            )
            await self._mounter.release(host, port)

    def _save(self) -> defer.Deferred[None]:
        snapshot = {"volumes": {n: v.to_json() for n, v in sorted(self.volumes.items())}}
        return self._run_blocking(self._store.save, snapshot)

    def _lock(self, name: str) -> defer.DeferredLock:
        return self._locks.setdefault(name, defer.DeferredLock())

    def _get(self, name: str) -> Volume:
        volume = self.volumes.get(name)
        if volume is None:
            raise PluginError(f'no such volume: "{name}"')
        return volume

    def _mountpoint(self, volume: Volume) -> str:
        o = volume.options
        return self._mounter.mountpoint(o.host, o.port, volume.name)

    # -- the VolumeDriver API

    def handlers(self) -> dict[str, dockerplugin.Handler]:
        return {
            "/VolumeDriver.Create": self.create,
            "/VolumeDriver.Remove": self.remove,
            "/VolumeDriver.Mount": self.mount,
            "/VolumeDriver.Unmount": self.unmount,
            "/VolumeDriver.Path": self.path,
            "/VolumeDriver.Get": self.get,
            "/VolumeDriver.List": self.list,
            "/VolumeDriver.Capabilities": self.capabilities,
        }

    async def create(self, body: JSONObject) -> JSONObject:
        name = _volume_name(body)
        options = parse_options(string_map(body, "Opts"))
        async with self._lock(name):
            existing = self.volumes.get(name)
            if existing is not None:
                if existing.options == options:
                    return {}
                raise PluginError(f'volume "{name}" already exists with other options')
            # Mount eagerly, as the Go plug-in does, so an unreachable server or a missing
            # directory is reported by `docker volume create`, not by a later `docker run`.
            await self._mounter.attach(options.spec(name))
            self.volumes[name] = Volume(
                name=name, options=options, created_at=self._clock.seconds()
            )
            await self._save()
        log.info(
            "created volume {name} for {host}:{port}{remote}",
            name=name,
            host=options.host,
            port=options.port,
            remote=options.remote_dir,
        )
        return {}

    async def remove(self, body: JSONObject) -> JSONObject:
        name = _volume_name(body)
        async with self._lock(name):
            volume = self._get(name)
            if volume.used_by:
                raise PluginError(
                    f"volume {name} is mounted by containers: [{' '.join(volume.used_by)}]"
                )
            o = volume.options
            del self.volumes[name]
            await self._save()
            try:
                await self._mounter.detach(o.host, o.port, name)
            except Exception:
                # The volume is gone for Docker either way; a mount left behind is retried
                # when its server's last volume goes, and cleaned at the next start.
                log.failure("detaching removed volume {name} failed", name=name)
        log.info("removed volume {name}", name=name)
        return {}

    async def mount(self, body: JSONObject) -> JSONObject:
        name = _volume_name(body)
        caller = field(body, "ID", str)
        async with self._lock(name):
            volume = self._get(name)
            mountpoint = await self._mounter.attach(volume.options.spec(name))
            if caller not in volume.used_by:
                volume.used_by.append(caller)
                await self._save()
        log.info("mounted volume {name} for {caller}", name=name, caller=caller[:12])
        return {"Mountpoint": mountpoint}

    async def unmount(self, body: JSONObject) -> JSONObject:
        name = _volume_name(body)
        caller = field(body, "ID", str)
        async with self._lock(name):
            volume = self._get(name)
            if caller in volume.used_by:
                volume.used_by.remove(caller)
                await self._save()
        log.info("unmounted volume {name} for {caller}", name=name, caller=caller[:12])
        return {}

    def path(self, body: JSONObject) -> JSONObject:
        return {"Mountpoint": self._mountpoint(self._get(_volume_name(body)))}

    def get(self, body: JSONObject) -> JSONObject:
        volume = self._get(_volume_name(body))
        o = volume.options
        return {
            "Volume": {
                "Name": volume.name,
                "Mountpoint": self._mountpoint(volume),
                "CreatedAt": _rfc3339(volume.created_at),
                "Status": {
                    "host": o.host,
                    "port": o.port,
                    "container": o.container,
                    "remoteDir": o.remote_dir,
                    "ro": o.ro,
                    "usedBy": list(volume.used_by),
                },
            }
        }

    def list(self, body: JSONObject) -> JSONObject:
        return {
            "Volumes": [
                {"Name": v.name, "Mountpoint": self._mountpoint(v)}
                for _, v in sorted(self.volumes.items())
            ]
        }

    def capabilities(self, body: JSONObject) -> JSONObject:
        return {"Capabilities": {"Scope": "local"}}


def _volume_name(body: JSONObject) -> str:
    name = field(body, "Name", str)
    if not _VOLUME_NAME.fullmatch(name):
        raise BadRequest(
            f"invalid volume name {name!r}: use letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit)"
        )
    return name


# -- the twistd tap


class Options(LogOptionsMixin, usage.Options):
    optParameters = [
        [
            "listen",
            "l",
            dockerplugin.plugin_endpoint("telemount"),
            "Endpoint the plug-in API listens on.",
        ],
        ["mount-root", "m", "/mnt/volumes", "Directory under which SFTP servers are mounted."],
        [
            "state-dir",
            "s",
            "/var/lib/telenet/telemount",
            "Directory for saved volumes, helper sockets and logs.",
        ],
        [
            "timeout",
            None,
            "10",
            "Seconds an SFTP request may take before the server is considered gone.",
        ],
        [
            "linger",
            None,
            os.environ.get("DISCONNECTED_LINGER_TIME", "5s"),
            "How long a disconnected, unused mount stays before it is unmounted (Go duration; "
            "default from $DISCONNECTED_LINGER_TIME).",
        ],
        [
            "ping-timeout",
            None,
            os.environ.get("HOST_PING_TIMEOUT", "1s"),
            "How long to wait for an SFTP server to accept a connection before mounting it "
            "(Go duration; default from $HOST_PING_TIMEOUT).",
        ],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        for key in ("timeout", "linger", "ping-timeout"):
            try:
                self[key] = parse_duration(self[key])
            except ValueError:
                raise usage.UsageError(
                    f"--{key} must be a duration such as 10, 1.5s, 500ms or 1m30s"
                ) from None
            if self[key] <= 0:
                raise usage.UsageError(f"--{key} must be positive")


class _MounterService(dockerplugin.DrainingService):
    """
    Adopts the helpers of an earlier run at start. At the end, once the requests in flight are
    answered (a Create or Mount under way completes rather than leaving its new helper and
    mount behind), it unmounts and stops the helpers.
    """

    def __init__(
        self,
        mounter: IMounter,
        driver: VolumeDriver,
        site: dockerplugin.PluginSite | None = None,
        pool: ThreadPool | None = None,
    ) -> None:
        super().__init__(site, pool)
        self.mounter = mounter
        self.driver = driver

    def start_work(self) -> None:
        d = self.mounter.adopt(self.driver.expected_mounts())
        d.addErrback(lambda f: log.failure("adopting earlier mounts failed", f))

    def stop_work(self) -> defer.Deferred[None]:
        d = self.mounter.shutdown()
        if self.site is not None:
            reactor = self.site.reactor
            # A request the drain gave up on fails once its helper is stopped: a moment for
            # that answer to be written before the reactor drops the connections.
            d.addBoth(lambda _: task.deferLater(reactor, 0.1, lambda: None))
        return d


def makeService(options: Options, reactor: IReactor | None = None) -> service.MultiService:
    if reactor is None:
        reactor = global_reactor()
    from telenet.core.state import JSONFileStore
    from telenet.volumes.mounter import ProcessMounter

    assert IReactorTime.providedBy(reactor) and IReactorCore.providedBy(reactor)
    assert IReactorThreads.providedBy(reactor)
    state_dir = options["state-dir"]
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    dockerplugin.ensure_socket_dir(options["listen"])

    top = service.MultiService()
    pool, run_blocking = state_thread(reactor, "telemount-state")

    mounter = ProcessMounter(
        reactor,
        mount_root=options["mount-root"],
        state_dir=os.path.join(state_dir, "mounts"),
        timeout=options["timeout"],
        ping_timeout=options["ping-timeout"],
    )
    driver = VolumeDriver(
        mounter, JSONFileStore(os.path.join(state_dir, "volumes.json")), reactor, run_blocking
    )
    driver.restore()
    from telenet.core.pluginadmin import LevelControl, admin_handlers

    admin = admin_handlers(reactor, lambda: health(driver, mounter), LevelControl(reactor))
    resource = dockerplugin.PluginResource(["VolumeDriver"], {**driver.handlers(), **admin})
    site = dockerplugin.plugin_site(resource)
    assert isinstance(site, dockerplugin.PluginSite)
    # Stopped together with the listener: it drains the site before unmounting anything.
    _MounterService(mounter, driver, site, pool).setServiceParent(top)
    linger = TimerService(max(options["linger"] / 2, 0.5), _reap, driver, options)
    linger.clock = reactor
    linger.setServiceParent(top)
    strports.service(options["listen"], site, reactor=reactor).setServiceParent(top)
    return top


def _reap(driver: VolumeDriver, options: Options) -> defer.Deferred[None]:
    d = defer.ensureDeferred(driver.reap_disconnected(options["linger"], options["ping-timeout"]))
    # A failed round is logged; the timer keeps running.
    return d.addErrback(lambda f: log.failure("checking disconnected mounts failed", f))


async def health(driver: VolumeDriver, mounter: IMounter) -> dict[str, Any]:
    """``/Telenet.Health``'s counters: the volumes, and each SFTP server's mount and helper."""
    servers: dict[tuple[str, int], list[str]] = {}
    for name, volume in sorted(driver.volumes.items()):
        servers.setdefault((volume.options.host, volume.options.port), []).append(name)
    mounts = []
    for (host, port), names in sorted(servers.items()):
        try:
            status = await mounter.status(host, port)
        except Exception as e:  # one helper's trouble is its entry's, not the whole answer's
            status = {"mounted": False, "error": str(e) or type(e).__name__}
        mounts.append(
            {
                "Server": f"{host}:{port}",
                "Volumes": names,
                "Mounted": bool(status.get("mounted")),
                "Connected": bool(status.get("connected")),
                "Since": status.get("since"),
                "HelperPid": status.get("pid"),
                "BytesRead": status.get("read_bytes", 0),
                "BytesWritten": status.get("written_bytes", 0),
                "IOErrors": status.get("io_errors", 0),
                **({"Error": status["error"]} if "error" in status else {}),
            }
        )
    return {"Volumes": len(driver.volumes), "Mounts": mounts}
