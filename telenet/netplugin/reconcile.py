# -*- test-case-name: tests.test_routeplugin,tests.test_routesweep -*-
"""
The network driver's reconciliation with Docker: ``ReconcileMixin``.

Endpoints Docker let go while the plug-in could not hear it are found by
``telenet.netplugin.sweep.EndpointSweep``; this part of ``NetworkDriver`` runs its looks (at
most one at a time, again while any endpoint is pending), keeps the Docker calls in flight
out of them (``_call_on``), and forgets what they find (``_drop``), telling the daemon.

It relies on ``DriverBase``'s ``networks``, ``endpoints``, ``_busy``, ``_sweep``,
``_sweep_call``, ``_sweeping``, ``_netlink``, ``_clock``, ``_timeout`` and ``_save``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from twisted.internet import defer
from twisted.logger import Logger

from telenet.netplugin.driverbase import DriverBase
from telenet.netplugin.records import PluginEndpoint
from telenet.netplugin.sweep import SETTLE
from telenet.teleroute.proto import teleroute_pb2

log = Logger()


class ReconcileMixin(DriverBase):
    """Finding and forgetting the endpoints Docker no longer has."""

    @contextlib.contextmanager
    def _call_on(self, endpoint_id: str) -> Iterator[None]:
        """Marks a Docker call on ``endpoint_id`` in flight, for the sweep."""
        self._busy[endpoint_id] += 1
        try:
            yield
        finally:
            self._busy[endpoint_id] -= 1
            if not self._busy[endpoint_id]:
                del self._busy[endpoint_id]

    # -- endpoints Docker let go while we could not hear it (telenet.netplugin.sweep)

    def _drop(self, endpoint: PluginEndpoint, why: str) -> None:
        """Forget a stale endpoint (the caller saves), and tell its daemon in the background."""
        self.endpoints.pop(endpoint.id, None)
        log.warn(
            "forgetting endpoint {id} of network {network}: Docker no longer has it ({why})",
            id=endpoint.id[:12],
            network=endpoint.network[:12],
            why=why,
        )
        network = self.networks.get(endpoint.network)
        link = network.link if network is not None else None
        if link is None or not link.connected or link.client is None:
            return
        d = link.client.remove_endpoint(
            teleroute_pb2.EndpointIdentifier(id=endpoint.id), self._timeout
        )
        d.addTimeout(self._timeout, self._clock)
        d.addErrback(
            lambda f: log.info(
                "the daemon did not forget endpoint {id}: {error}",
                id=endpoint.id[:12],
                error=f.value,
            )
        )

    def _schedule_sweep(self, delay: float = SETTLE) -> None:
        if self._sweep_call is None or not self._sweep_call.active():
            self._sweep_call = self._clock.callLater(delay, self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep_call = None
        if self._sweeping:
            self._schedule_sweep()
            return
        self._sweeping = True

        def done(result: object) -> None:
            self._sweeping = False
            if self._sweep.pending(e.seen() for e in self.endpoints.values()):
                self._schedule_sweep()

        d = defer.Deferred.fromCoroutine(self._sweep_once())
        d.addErrback(lambda f: log.failure("looking for stale endpoints failed", f))
        d.addBoth(done)

    async def _sweep_once(self) -> None:
        ours: set[str] = set()
        if self._netlink is not None and any(e.interface for e in self.endpoints.values()):
            try:
                ours = {link.name for link in await self._netlink.links()}
            finally:
                # Looks are rare: hold no netlink socket between them.
                await self._netlink.close()
        stale = self._sweep.look([e.seen() for e in self.endpoints.values()], ours, set(self._busy))
        for s in stale:
            endpoint = self.endpoints.get(s.id)
            if endpoint is not None and s.id not in self._busy:
                self._drop(endpoint, s.why)
        if stale:
            await self._save()
