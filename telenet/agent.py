# -*- test-case-name: tests.test_agent -*-
"""
The ``sftp-agent`` app: a raw SFTP v3 server (no SSH layer) exporting a directory.

It plays the part of a Telepresence traffic-agent: the directory given by ``--root`` is
exported as the virtual path ``/tel_app_exports`` (``telenet.sftp.rooted`` confines every
path to it), served by ``telenet.sftp.server`` on ``--listen``, with file I/O in a thread
pool of ``--threads`` threads. This module is only the twistd app: its options and service.
"""

from __future__ import annotations

import os
from typing import cast

from twisted.application import service, strports
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from telenet.core.logoptions import LogOptionsMixin
from telenet.core.threads import ThreadPoolService
from telenet.sftp.runners import threadpool_runner
from telenet.sftp.server import AgentFactory


class Options(LogOptionsMixin, usage.Options):
    synopsis = "--root DIR [--listen ENDPOINT]"
    longdesc = (
        "Serve DIR over raw SFTP (no SSH) as /tel_app_exports, like a Telepresence traffic-agent."
    )
    optParameters = [
        ["root", None, None, "Directory to export (required).", str],
        ["listen", None, "tcp:8022", "Endpoint to listen on.", str],
        ["threads", None, 8, "File I/O threads.", int],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        root = self["root"]
        if not root:
            raise usage.UsageError("--root DIR is required")
        if not os.path.isdir(root):
            raise usage.UsageError(f"--root {root!r} is not an existing directory")
        if self["threads"] < 1:
            raise usage.UsageError("--threads must be at least 1")


def makeService(options: Options, reactor: IReactorCore | None = None) -> service.MultiService:
    """The ``sftp-agent`` app: the thread pool, then the listener (stopped in reverse)."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = cast(IReactorCore, _reactor)
    pool = ThreadPool(minthreads=0, maxthreads=options["threads"], name="sftp-agent-io")
    top = service.MultiService()
    ThreadPoolService(pool).setServiceParent(top)
    runner = threadpool_runner(cast(IReactorFromThreads, reactor), pool)
    factory = AgentFactory(options["root"], runner)
    strports.service(options["listen"], factory, reactor=reactor).setServiceParent(top)
    return top


__all__ = ["Options", "makeService"]
