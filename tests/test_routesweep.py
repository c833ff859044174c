"""``telenet.netplugin.sweep.EndpointSweep``: which saved endpoints Docker no longer has."""

from __future__ import annotations

from twisted.internet import task

from telenet.netplugin.sweep import EndpointSweep, Seen


def test_joined_endpoint_whose_interface_stays_back_is_stale_at_the_second_look() -> None:
    """One look sees the interface back in our namespace; the next, a second on, decides."""
    clock = task.Clock()
    sweep = EndpointSweep(clock, join_within=45, settle=1)
    clock.advance(5)
    endpoints = [Seen("a", "tp-a", joined=True, since=0), Seen("b", "tp-b", True, 0)]
    assert sweep.look(endpoints, {"lo", "tp-a"}, busy=set()) == []
    assert sweep.pending(endpoints)
    clock.advance(0.5)
    assert sweep.look(endpoints, {"lo", "tp-a"}, busy=set()) == []
    clock.advance(0.5)
    (stale,) = sweep.look(endpoints, {"lo", "tp-a"}, busy=set())
    assert stale.id == "a" and "tp-a left the container" in stale.why
    assert not sweep.pending(endpoints[1:])


def test_an_interface_that_moves_on_is_forgiven() -> None:
    """Seen back once, then gone into a container (Docker was moving it): never stale."""
    clock = task.Clock()
    sweep = EndpointSweep(clock, settle=1)
    clock.advance(5)
    endpoints = [Seen("a", "tp-a", True, 0)]
    assert sweep.look(endpoints, {"tp-a"}, set()) == []
    clock.advance(1)
    assert sweep.look(endpoints, set(), set()) == []
    clock.advance(1)
    assert sweep.look(endpoints, {"tp-a"}, set()) == []  # a fresh first sighting
    assert sweep.pending(endpoints)


def test_just_joined_or_busy_endpoints_are_left_alone() -> None:
    """Right after Join (Docker still moving the interface) and with a call in flight."""
    clock = task.Clock()
    sweep = EndpointSweep(clock, settle=1)
    clock.advance(10)
    fresh = Seen("a", "tp-a", True, since=9.5)
    busy = Seen("b", "tp-b", True, since=0)
    for _ in range(3):
        assert sweep.look([fresh, busy], {"tp-a", "tp-b"}, busy={"b"}) == []
        clock.advance(0.2)


def test_unjoined_endpoint_expires_after_join_within() -> None:
    """Made (or restored) and never joined: stale once Docker's Join cannot come any more."""
    clock = task.Clock()
    sweep = EndpointSweep(clock, join_within=45)
    endpoints = [Seen("a", "", joined=False, since=0)]
    clock.advance(44.9)
    assert sweep.look(endpoints, set(), set()) == [] and sweep.pending(endpoints)
    clock.advance(0.1)
    (stale,) = sweep.look(endpoints, set(), set())
    assert stale.id == "a" and "did not join it within 45s" in stale.why


def test_endpoint_without_an_interface_through_docker_is_kept() -> None:
    """The daemon's own interface, made in its netns, never went through Docker."""
    clock = task.Clock()
    sweep = EndpointSweep(clock)
    clock.advance(100)
    assert sweep.look([Seen("d", "", True, 0)], {"lo"}, set()) == []
