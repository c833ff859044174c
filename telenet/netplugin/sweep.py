# -*- test-case-name: tests.test_routesweep,tests.test_routeplugin -*-
"""
Which of the network plug-in's saved endpoints Docker no longer has: ``EndpointSweep``.

The plug-in saves every endpoint before Docker hears it was made, and forgets it when Docker
deletes it. A plug-in killed in the middle of a call can still end up keeping an endpoint
that Docker has not got, because Docker decides the outcome of a call the plug-in died in:

- a ``DeleteEndpoint`` that dies (even before the plug-in saved anything) is done for Docker,
  which ignores a network driver's errors there and retries with an empty body;
- a ``CreateEndpoint`` saved but not answered is a failure for Docker, which never joins nor
  deletes that endpoint.

No call Docker makes later names such an endpoint again, so the plug-in finds them by what
only Docker's real endpoints have:

- **A joined endpoint's interface is inside its container.** Docker moves the veth end that
  Join handed over into the container's namespace, and moves it back into ours (under its
  old name) at Leave, right before DeleteEndpoint. An endpoint whose interface has been in
  our namespace for ``settle`` seconds, seen at two looks that far apart, with no call on it
  in flight, has left its container: Docker deleted it or is deleting it.
- **Docker joins what it created.** Docker sends Join right after a successful
  CreateEndpoint; a Join that finds the plug-in down is retried for at most 30 s. An
  endpoint not joined ``join_within`` seconds after it was made (or after a restart found
  it) was never Docker's.

Two more are certain at once and are applied by the driver where they happen: Docker gives
an address only to one live endpoint of a network (it releases it after DeleteEndpoint), and
the daemon hands a veth end only to one live endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from twisted.internet.interfaces import IReactorTime

#: Docker retries a call that could not reach the plug-in for 30 s; a Join comes within that.
JOIN_WITHIN = 45.0
#: Docker moves an interface into its container within milliseconds of Join's answer.
SETTLE = 1.0


@attrs.frozen
class Seen:
    """What a sweep needs of one saved endpoint."""

    id: str
    #: The veth end Join handed to Docker ("" before Join, or when none went through Docker).
    interface: str
    joined: bool
    #: When the endpoint was made, joined or restored by this process (clock seconds).
    since: float


@attrs.frozen
class Stale:
    id: str
    why: str


class EndpointSweep:
    """
    I remember, between looks, which endpoints' interfaces sit in our namespace; ``look``
    says which endpoints are stale now.
    """

    def __init__(
        self, clock: IReactorTime, join_within: float = JOIN_WITHIN, settle: float = SETTLE
    ) -> None:
        self.clock = clock
        self.join_within = join_within
        self.settle = settle
        #: Endpoint id -> when its interface was first seen back in our namespace.
        self._back: dict[str, float] = {}

    def look(self, endpoints: Iterable[Seen], our_links: set[str], busy: set[str]) -> list[Stale]:
        """
        The stale ones among ``endpoints``, given the link names in our namespace now;
        endpoints in ``busy`` (a call on them in flight) are left alone.
        """
        now = self.clock.seconds()
        stale: list[Stale] = []
        watched: set[str] = set()
        for e in endpoints:
            if e.id in busy:
                continue
            if not e.joined:
                if now - e.since >= self.join_within:
                    stale.append(
                        Stale(
                            e.id,
                            f"Docker did not join it within {self.join_within:g}s of its creation",
                        )
                    )
                continue
            if not e.interface or e.interface not in our_links or now - e.since < self.settle:
                continue
            watched.add(e.id)
            first = self._back.setdefault(e.id, now)
            if now - first >= self.settle:
                stale.append(Stale(e.id, f"its interface {e.interface} left the container"))
        self._back = {i: t for i, t in self._back.items() if i in watched}
        for s in stale:
            self._back.pop(s.id, None)
        return stale

    def pending(self, endpoints: Iterable[Seen]) -> bool:
        """Whether another look later could find more (unjoined ones, interfaces watched)."""
        return bool(self._back) or any(not e.joined for e in endpoints)
