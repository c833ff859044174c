"""
The reactor's type, and the one way library code reaches the global reactor.

Library code takes the reactor as an argument, typed with the narrowest Twisted interface it
uses (``IReactorTime`` for a timeout, ``IReactorProcess`` to run a program). Code that needs
several takes ``IReactor``: every interface a telenet process uses of the reactor, as one type.
Twisted's real reactors provide all of them; ``MemoryReactorClock`` provides the ones the unit
tests drive. Only the ``makeService`` edges (and the entry points) call ``global_reactor``.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorPluggableResolver,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUDP,
    IReactorUNIX,
)


class IReactor(
    IReactorCore,
    IReactorTime,
    IReactorTCP,
    IReactorUDP,
    IReactorUNIX,
    IReactorSocket,
    IReactorProcess,
    IReactorThreads,
    IReactorFromThreads,
    IReactorPluggableResolver,
):
    """What telenet's processes use of the reactor: the interfaces of a real Twisted reactor."""


def global_reactor() -> IReactor:
    """The installed global reactor (installing the default one if none was chosen)."""
    from twisted.internet import reactor

    return cast(IReactor, reactor)
