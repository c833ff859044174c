"""
The seams of telenet: every side effect sits behind one of these interfaces.

Each has a real implementation beside the code that uses it and a memory fake in
``telenet.testing``; one contract test runs the same assertions against both.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface


class IStateStore(Interface):
    """Durable storage of one plug-in's state as a JSON-able dict."""

    def load() -> dict[str, Any]:
        """The last saved state, or ``{}`` when none was ever saved."""

    def save(data: dict[str, Any]) -> None:
        """Replace the saved state atomically; it survives a crash right after this returns."""


class IMounter(Interface):
    """
    Mounts SFTP servers and exposes volumes on them.

    One FUSE mount serves every volume of one SFTP server (host, port); each volume is a
    directory of that mount mapped onto a remote directory, read-only or writable.
    """

    def attach(host: str, port: int, name: str, remote_dir: str, ro: bool) -> Deferred[str]:
        """
        Make volume ``name`` available, mounting its server first if needed.

        Fires with the volume's mount point, or fails with a ``PluginError`` saying why
        (server unreachable, remote directory missing, ...). Idempotent.
        """

    def detach(host: str, port: int, name: str) -> Deferred[None]:
        """Withdraw volume ``name``; the server's mount goes away with its last volume."""

    def mountpoint(host: str, port: int, name: str) -> str:
        """Where volume ``name`` appears (or will appear) on this host."""

    def status(host: str, port: int) -> Deferred[dict[str, Any]]:
        """
        ``{"mounted": bool, "connected": bool, "since": float, ...}`` for the server's mount;
        ``since`` is when it last connected or lost its connection (Unix time).
        """

    def release(host: str, port: int) -> Deferred[None]:
        """Unmount the server now; its volumes come back at their next ``attach``."""

    def reachable(host: str, port: int, timeout: float) -> Deferred[bool]:
        """Whether a TCP connection to the server succeeds within ``timeout`` seconds."""

    def adopt(expected: Any) -> Deferred[None]:
        """
        Take over mounts left by an earlier run of the plug-in.

        ``expected`` maps ``(host, port)`` to ``{volume name: (remote dir, ro)}``: what the
        saved state says each server should serve. Anything else is withdrawn or unmounted.
        """

    def shutdown() -> Deferred[None]:
        """Unmount everything this mounter made and stop its helpers."""
