"""Thread pools that live as long as the twistd application that owns them."""

from __future__ import annotations

from twisted.application import service
from twisted.python.threadpool import ThreadPool


class ThreadPoolService(service.Service):
    """Starts a thread pool with the application and stops it (joining its threads) at the end."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()
