# -*- test-case-name: tests.test_sftpfs -*-
"""
The telemount FUSE filesystem, and the mount helper process that serves it.

pyfuse3 serves one mount per process, so the volume plug-in runs one helper per SFTP server::

    python -m telenet.fuse.helper --host H --port P --mountpoint MP --control SOCK
                             [--log-file F] [--timeout SECONDS] [--wait SECONDS]

The mount root lists one directory per volume; volume ``NAME`` is ``MP/NAME`` and shows a
remote directory, read-only or writable. The plug-in adds and removes volumes over the control
socket ``SOCK`` (newline-delimited JSON, one answer line per request line: add, remove, status,
shutdown; the schema is ``telenet.fuse.protocol``). The helper prints one JSON line on stdout
when it is ready (``{"ready": true, "pid": PID}``) or cannot start (``{"error": "..."}``,
exit 1), then logs only to the log file. ``--wait`` retries the first connection for that many
seconds (a server that is still starting), so that a mount never comes up empty.

pyfuse3 runs in asyncio mode on Twisted's asyncio reactor: FUSE handlers, the SFTP client and
the control socket share one loop and one thread, so nothing here may block.

This module is only the entry point (arguments, wiring, ``main``). The filesystem is
``telenet.fuse.operations.SFTPOperations``, put together from ``inodes``, ``names``,
``files``, ``directories`` and ``prefetch`` over the records in ``nodes``; ``resume`` bridges
Deferreds into the handlers, ``errors`` turns failures into errnos, ``control`` is the control
socket and ``tuning`` the process and mount adjustments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

import pyfuse3
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.core.aio import as_deferred, as_future
from telenet.core.gocompat import host_port
from telenet.core.internals import reactor_loop
from telenet.fuse.control import ControlFactory, MountControl
from telenet.fuse.operations import SFTPOperations
from telenet.fuse.tuning import (
    FuseFdWaiter,
    StdlibToTwisted,
    clear_stale_mount,
    tune_gc,
    tune_malloc,
    tune_readahead,
)
from telenet.sftp.errors import SFTPNotConnected

__all__ = ["main"]

log = Logger(namespace="telenet.fuse.helper")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m telenet.fuse.helper", description=__doc__.split("\n")[1]
    )
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--mountpoint", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--log-file")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--wait", type=float, default=0.0)
    return p.parse_args(argv)


def _say(obj: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # whoever started us is gone; carry on (it re-adopts us through the socket)


def main(argv: list[str] | None = None) -> int:
    """Run a mount helper (see the module docstring for the contract)."""
    try:
        os.setsid()  # outlive the plug-in that started us
    except OSError:
        pass  # already a session (or group) leader
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    label = host_port(args.host, args.port)
    tune_malloc()
    # Twisted's TCP module loads pyOpenSSL (and OpenSSL with it) for startTLS when it can: about
    # 14 MiB of a helper that never speaks TLS. Without it, Twisted just has no startTLS.
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]

    from telenet.core.aio import install_asyncio_reactor

    install_asyncio_reactor()
    import pyfuse3.asyncio as pyfuse3_asyncio

    pyfuse3_asyncio.enable()
    from twisted.internet import reactor

    loop = reactor_loop(reactor)
    assert loop is not None, "install_asyncio_reactor() installed it"
    FuseFdWaiter(loop, pyfuse3_asyncio.ClosedResourceError).install(pyfuse3_asyncio)
    from twisted.internet.endpoints import HostnameEndpoint
    from twisted.internet.error import ReactorNotRunning
    from twisted.internet.interfaces import IReactorUNIX
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from telenet.sftp.connection import SFTPConnectionManager

    log_out = open(args.log_file, "a", buffering=1) if args.log_file else sys.stderr  # noqa: SIM115
    observer = FilteringLogObserver(
        textFileLogObserver(log_out), [LogLevelFilterPredicate(LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    stdlib = logging.getLogger()
    stdlib.addHandler(StdlibToTwisted())
    stdlib.setLevel(logging.INFO)

    mountpoint = os.path.abspath(args.mountpoint)
    timeout = args.timeout
    manager = SFTPConnectionManager(
        HostnameEndpoint(reactor, args.host, args.port, timeout=timeout),
        reactor,
        timeout=timeout,
        keepalive=min(5.0, max(timeout / 2, 0.5)),
        label=label,
    )
    fs = SFTPOperations(manager, store=pyfuse3.notify_store)
    outcome = {"code": 0}
    state: dict[str, Any] = {"main": None, "port": None}

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping

    def stop_soon() -> None:
        reactor.callLater(0, stop)  # after the answer to "shutdown" is on its way

    async def start() -> None:
        manager.start()
        try:
            await as_future(manager.whenFirstConnected(args.wait))
        except Exception as e:
            reason = manager.lastError if isinstance(e, defer.TimeoutError) else str(e)
            if isinstance(e, SFTPNotConnected):
                reason = manager.lastError
            if args.wait > 0:
                reason += f" (tried for {args.wait:g}s)"
            _say({"error": f"cannot reach SFTP server at {label}: {reason}"})
            outcome["code"] = 1
            stop()
            return
        try:
            clear_stale_mount(mountpoint)
            os.makedirs(mountpoint, exist_ok=True)
            options = {
                f"fsname=telemount:{label}",
                "subtype=telemount",
                "allow_other",
                # The kernel checks permissions against the owner and modes we report.
                "default_permissions",
                # Device nodes made through the mount are listed, never opened.
                "nodev",
                "noatime",
            }
            pyfuse3.init(fs, mountpoint, options)
        except Exception as e:
            _say({"error": f"cannot mount {mountpoint}: {e}"})
            outcome["code"] = 1
            stop()
            return

        # The kernel sets the mount's read-ahead when it gets the answer to INIT: after that.
        def initialised() -> None:
            reactor.callLater(0, tune_readahead, mountpoint)

        fs.on_init = initialised
        control = MountControl(fs, manager, args.host, args.port, mountpoint, stop_soon)
        try:
            if os.path.lexists(args.control):
                os.unlink(args.control)
            state["port"] = IReactorUNIX(reactor).listenUNIX(
                args.control, ControlFactory(control), mode=0o600
            )
        except Exception as e:
            pyfuse3.close(unmount=True)
            _say({"error": f"cannot listen on {args.control}: {e}"})
            outcome["code"] = 1
            stop()
            return
        main_task = asyncio.ensure_future(pyfuse3.main())
        state["main"] = main_task
        main_task.add_done_callback(lambda t: stop())  # e.g. fusermount3 -u from outside
        tune_gc()
        _say({"ready": True, "pid": os.getpid()})
        sink = os.open(args.log_file or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        os.close(sink)
        log.info("mounted {label} at {mountpoint}", label=label, mountpoint=mountpoint)

    async def shutdown() -> None:
        main_task: asyncio.Future[None] | None = state["main"]
        if main_task is not None:
            if not main_task.done():
                pyfuse3.terminate()
                try:
                    await asyncio.wait_for(asyncio.shield(main_task), timeout + 5)
                except Exception:
                    log.warn("FUSE main loop did not end in time")
            if main_task.done() and not main_task.cancelled() and main_task.exception():
                log.failure("FUSE main loop failed", Failure(main_task.exception()))
            fs.release_all()
            pyfuse3.close(unmount=True)
            log.info("unmounted {mountpoint}", mountpoint=mountpoint)
        if state["port"] is not None:
            await as_future(defer.maybeDeferred(state["port"].stopListening))
            try:
                os.unlink(args.control)
            except FileNotFoundError:
                pass
        await as_future(manager.stop())

    reactor.callWhenRunning(lambda: as_deferred(start()))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: as_deferred(shutdown()))
    reactor.run()
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
