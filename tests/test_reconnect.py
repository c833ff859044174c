"""``telenet.core.reconnect.Reconnector``: one connection kept up, with task.Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task

from telenet.core.reconnect import GaveUp, Reconnector

from .helpers import failure_of, result_of


class Server:
    """Makes connections on demand: each attempt waits until ``answer`` or ``refuse``."""

    def __init__(self) -> None:
        self.attempts: list[defer.Deferred[Any]] = []
        self.connections: list[tuple[str, defer.Deferred[object]]] = []

    def attempt(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.attempts.append(d)
        return d

    def answer(self) -> str:
        name = f"conn{len(self.connections)}"
        self.connections.append((name, defer.Deferred()))
        self.attempts[-1].callback(name)
        return name

    def refuse(self) -> None:
        self.attempts[-1].errback(ConnectionRefusedError("refused"))

    def ended(self, connection: str) -> defer.Deferred[object]:
        return dict(self.connections)[connection]

    def end(self, connection: str) -> None:
        dict(self.connections)[connection].callback(None)


def policy(failures: int) -> float:
    return backoffPolicy(initialDelay=0.1, maxDelay=2.0, factor=2.0, jitter=lambda: 0)(failures)


def make() -> tuple[task.Clock, Server, Reconnector[str], list[Any]]:
    clock, server = task.Clock(), Server()
    r: Reconnector[str] = Reconnector(server.attempt, clock, policy, ended=server.ended)
    seen: list[Any] = []
    r.observers.append(seen.append)
    return clock, server, r, seen


def test_retries_with_backoff_until_it_connects() -> None:
    """Failed attempts are retried after the policy's growing delays; waiters get the one."""
    clock, server, r, seen = make()
    r.start()
    waiting = r.wait()
    gaps = []
    for _ in range(6):
        server.refuse()
        (retry,) = clock.getDelayedCalls()
        gaps.append(round(retry.getTime() - clock.seconds(), 3))
        clock.advance(gaps[-1])
    assert gaps == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert r.failures == 6 and "refused" in r.last_failure.getErrorMessage()  # type: ignore[union-attr]
    name = server.answer()
    assert result_of(waiting) == name and r.current == name and seen == [name]
    assert r.failures == 0 and r.last_failure is None


def test_a_lost_connection_is_made_again() -> None:
    """The end of a connection starts a new attempt after the initial delay."""
    clock, server, r, seen = make()
    r.start()
    first = server.answer()
    server.end(first)
    assert r.current is None and seen == [first, None]
    assert len(server.attempts) == 1
    clock.advance(0.1)
    assert len(server.attempts) == 2
    second = server.answer()
    assert r.current == second and result_of(r.wait()) == second


def test_now_skips_the_wait_and_waiters_can_give_up() -> None:
    """now() tries at once; wait(fail_after=n) fails after n more failed attempts."""
    clock, server, r, _ = make()
    r.start()
    server.refuse()
    impatient = r.wait(fail_after=2)
    patient = r.wait()
    r.now()  # instead of the retry 0.2 s from now
    assert len(server.attempts) == 2 and not clock.getDelayedCalls()
    server.refuse()
    assert not impatient.called
    clock.advance(0.4)
    server.refuse()
    assert isinstance(failure_of(impatient).value, GaveUp)
    assert not patient.called
    clock.advance(0.8)
    server.answer()
    assert patient.called


def test_stop_ends_everything() -> None:
    """stop(): the attempt is cancelled, waiters give up, no more attempts or retries."""
    clock, server, r, _ = make()
    r.start()
    waiting = r.wait()
    r.stop()
    assert isinstance(failure_of(waiting).value, GaveUp)
    assert server.attempts[0].called  # cancelled
    assert clock.getDelayedCalls() == []
    assert isinstance(failure_of(r.wait()).value, GaveUp)


def test_a_result_that_never_ends() -> None:
    """Without ``ended``, one success is enough: a retried operation rather than a connection."""
    clock, server = task.Clock(), Server()
    r: Reconnector[str] = Reconnector(server.attempt, clock, lambda n: 5.0)
    told: list[float] = []
    r.on_failure.append(lambda failure, delay: told.append(delay))
    r.start()
    server.refuse()
    assert told == [5.0]
    clock.advance(5)
    done = server.answer()
    assert r.current == done and clock.getDelayedCalls() == []


@pytest.mark.parametrize("raising", [True, False])
def test_an_attempt_that_raises_counts_as_a_failure(raising: bool) -> None:
    """An attempt function that raises is a failed attempt, retried like any other."""
    clock = task.Clock()

    def attempt() -> defer.Deferred[str]:
        if raising:
            raise OSError("no such socket")
        return defer.fail(OSError("no such socket"))

    r: Reconnector[str] = Reconnector(attempt, clock, lambda n: 1.0)
    r.start()
    assert r.failures == 1 and len(clock.getDelayedCalls()) == 1


def test_start_later() -> None:
    """start(delay) makes the first attempt that much later (0: the next reactor turn)."""
    clock, server, r, _ = make()
    r.start(0)
    assert server.attempts == []
    clock.advance(0)
    assert len(server.attempts) == 1


def test_a_wait_before_start_waits() -> None:
    """wait() before start() waits for the first connection; only a stop fails it."""
    _, server, r, _ = make()
    early = r.wait(fail_after=1)
    assert not early.called
    r.start()
    name = server.answer()
    assert result_of(early) == name


def test_stop_hands_back_the_connection() -> None:
    """stop() returns the connection for the caller to close; its end is no loss then."""
    clock, server, r, seen = make()
    r.start()
    name = server.answer()
    assert r.stop() == name
    assert r.current is None and seen == [name]
    server.end(name)
    clock.advance(10)
    assert seen == [name] and len(server.attempts) == 1
    assert r.stop() is None


def test_a_policy_that_says_none_waits_for_now() -> None:
    """A policy answering None schedules nothing, after a failure or a loss; now() tries."""
    clock, server = task.Clock(), Server()
    retrying = False

    def maybe(failures: int) -> float | None:
        return 1.0 if retrying else None

    r: Reconnector[str] = Reconnector(server.attempt, clock, maybe, ended=server.ended)
    told: list[float | None] = []
    r.on_failure.append(lambda failure, delay: told.append(delay))
    r.start()
    server.refuse()
    assert told == [None] and clock.getDelayedCalls() == []
    r.now()
    name = server.answer()
    server.end(name)
    assert clock.getDelayedCalls() == [] and len(server.attempts) == 2
    retrying = True
    r.now()
    server.refuse()
    assert told == [None, 1.0] and len(clock.getDelayedCalls()) == 1


def test_observers_and_listeners_hear_before_waiters() -> None:
    """What observers and failure listeners keep is up to date when a waiter wakes."""
    _, server, r, seen = make()
    heard: list[object] = []
    r.on_failure.append(lambda failure, delay: heard.append(failure.getErrorMessage()))
    failing = r.wait(fail_after=1)
    failing.addErrback(lambda f: heard.append(("waiter", list(heard))))
    connected = r.wait()
    connected.addCallback(lambda name: heard.append(("waiter", list(seen))))
    r.start()
    server.refuse()
    r.now()
    name = server.answer()
    assert heard == ["refused", ("waiter", ["refused"]), ("waiter", [name])]


def test_giving_up_carries_the_failure() -> None:
    """GaveUp.failure is the failed attempt; None when stopped."""
    _, server, r, _ = make()
    r.start()
    d = r.wait(fail_after=1)
    server.refuse()
    gave_up = failure_of(d).value
    assert isinstance(gave_up, GaveUp) and gave_up.failure is not None
    assert gave_up.failure.check(ConnectionRefusedError)
    later = r.wait()
    r.stop()
    stopped = failure_of(later).value
    assert isinstance(stopped, GaveUp) and stopped.failure is None


def test_a_listener_that_stops_leaves_no_retry() -> None:
    """A failure listener may give up (stop): no retry is left scheduled."""
    clock, server, r, _ = make()
    r.on_failure.append(lambda failure, delay: r.stop())
    r.start()
    server.refuse()
    assert not r.running and clock.getDelayedCalls() == []


def test_a_waiter_that_tries_again_leaves_no_retry() -> None:
    """A waiter that makes the next attempt itself: no retry is scheduled on top of it."""
    clock, server, r, _ = make()
    r.start()
    r.wait(fail_after=1).addErrback(lambda f: r.now())
    server.refuse()
    assert len(server.attempts) == 2 and clock.getDelayedCalls() == []


def test_a_wait_until_a_time_gives_up_when_the_next_retry_is_later() -> None:
    """
    wait(until=T) lasts through failed attempts; a retry the back-off would make after T is
    made at T, and when that one fails too the wait fails with its failure; the trying goes
    on for other waiters.
    """
    clock, server, r, seen = make()
    r.start()
    bounded = r.wait(until=1.0)
    patient = r.wait()
    server.refuse()  # retry at 0.2
    clock.advance(0.2)
    server.refuse()  # retry at 0.6
    clock.advance(0.4)
    server.refuse()  # the back-off says 1.4, past 1.0: the last try is at 1.0
    assert not bounded.called
    clock.advance(0.4)
    server.refuse()
    gave_up = failure_of(bounded)
    assert gave_up.check(GaveUp) and "refused" in gave_up.getErrorMessage()
    assert not patient.called
    clock.advance(5.0)
    name = server.answer()
    assert result_of(patient) == name


def test_a_wait_until_a_time_takes_a_connection_made_in_time() -> None:
    """An agent that answers within the bound: the bounded wait gets the connection."""
    clock, server, r, _ = make()
    r.start()
    bounded = r.wait(until=2.0)
    for gap in (0.2, 0.4, 0.8):
        server.refuse()
        clock.advance(gap)
    name = server.answer()
    assert result_of(bounded) == name and clock.seconds() == pytest.approx(1.4)
