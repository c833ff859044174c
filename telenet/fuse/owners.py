"""
Who owns what a volume shows, and what a local filesystem would decide about it.

The kernel checks permissions itself (the mount has ``default_permissions``) against the owner
and modes the filesystem reports, so those must be the truth the user chose: the server's ids
and modes, or, for a volume with ``uid``/``gid``/``umask`` options, that owner and the modes
less the umask. This module holds those rules, apart from the handlers; ``Settler.settle``
gives a name just made the owner and modes a local filesystem would.
"""

from __future__ import annotations

import errno
import stat
from typing import Any

import attrs
from pyfuse3 import FUSEError
from twisted.conch.ssh import filetransfer as ft
from twisted.python.failure import Failure

from telenet.fuse.resume import wait
from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FileAttrs
from telenet.sftp.errors import SFTPStatusError

__all__ = [
    "NAME_MAX",
    "SERVER_OWNED",
    "Ownership",
    "Settler",
    "check_name",
    "new_owner",
    "new_perms",
    "owner_change",
]

#: The longest name a component may have (what the server's statvfs says of ext4 and most).
NAME_MAX = 255


@attrs.frozen
class Ownership:
    """A volume's ``uid``/``gid``/``umask`` options: None shows the server's own value."""

    uid: int | None = None
    gid: int | None = None
    umask: int = 0

    def shown(self, a: FileAttrs, default_mode: int) -> tuple[int, int, int]:
        """(uid, gid, mode) the kernel is told for a file with attributes ``a``."""
        mode = a.permissions if a.permissions is not None else default_mode
        if self.umask:
            mode &= ~self.umask
        uid = self.uid if self.uid is not None else (a.uid or 0)
        gid = self.gid if self.gid is not None else (a.gid or 0)
        return uid, gid, mode


#: No options: the server's own ids and modes.
SERVER_OWNED = Ownership()


def check_name(name: bytes) -> None:
    """ENAMETOOLONG before asking: OpenSSH folds it into EINVAL ("Bad message")."""
    if len(name) > NAME_MAX:
        raise FUSEError(errno.ENAMETOOLONG)


def new_owner(ctx: Any, parent_gid: int, parent_mode: int) -> tuple[int, int] | None:
    """
    The (uid, gid) a local filesystem gives a new name made by ``ctx``'s process: its fsuid,
    and its fsgid or, under a set-group-ID directory, the directory's group. None without a
    request context (nothing to go by).
    """
    if ctx is None:
        return None
    gid = parent_gid if parent_mode & stat.S_ISGID else ctx.gid
    return int(ctx.uid), int(gid)


def new_perms(asked: int, is_dir: bool, parent_mode: int) -> int:
    """
    The permissions a local filesystem gives a new name the kernel asked for with ``asked``
    (already less the process's umask): the server applies its own umask too (OpenSSH's
    sftp-server does), so they are set again when they differ. A directory inherits the
    set-group-ID bit of its parent.
    """
    want = stat.S_IMODE(asked)
    if is_dir and parent_mode & stat.S_ISGID:
        want |= stat.S_ISGID
    return want


def owner_change(
    ownership: Ownership, uid: int | None, gid: int | None
) -> tuple[int | None, int | None]:
    """
    What of a chown reaches the server on a volume with fixed ``uid``/``gid``: nothing of a
    fixed id. Asking for the id already shown is a no-op; any other is EPERM (as vfat does),
    since the owner shown could not change.
    """
    if ownership.uid is not None and uid is not None:
        if uid != ownership.uid:
            raise FUSEError(errno.EPERM)
        uid = None
    if ownership.gid is not None and gid is not None:
        if gid != ownership.gid:
            raise FUSEError(errno.EPERM)
        gid = None
    return uid, gid


class Settler:
    """
    Gives names just made the owner and modes a local filesystem would (``settle``), and
    remembers a server that may not chown (one not running as root), so that it is not
    asked again at every create.
    """

    def __init__(self) -> None:
        self.may_chown = True

    def _refused(self, failure: Failure) -> None:
        if failure.check(SFTPStatusError) and failure.value.code == ft.FX_PERMISSION_DENIED:
            self.may_chown = False

    async def settle(
        self,
        client: SFTPClient,
        owner_opts: Ownership,
        parent: FileAttrs | None,
        path: bytes,
        made: FileAttrs,
        ctx: Any,
        mode: int | None,
    ) -> FileAttrs:
        """
        The attributes of the new name ``path`` once it has the owner and permissions a local
        filesystem would give it (``mode`` None: a symlink, which has no modes). The server made
        it as its own user and with its own umask. Only what differs is sent (nothing, for a root
        container on a root server); a server that may not chown keeps its own ids, silently:
        the remote side writes as itself. The SETSTATs and the LSTAT after them go out together.
        Once the server refused a chown, the owner is left to it.
        """
        setstat = client.setstat
        if mode is None:
            if not client.canLsetstat:
                return made
            setstat = client.lsetstat
        p = parent or FileAttrs()
        p_gid, p_mode = p.gid or 0, p.permissions or 0
        changes = []
        # A fixed owner shows whatever the server has: no chown then.
        chown = self.may_chown and owner_opts == SERVER_OWNED
        owner = new_owner(ctx, p_gid, p_mode) if chown else None
        if owner is not None and owner != (made.uid, made.gid):
            chowning = setstat(path, FileAttrs(uid=owner[0], gid=owner[1]), lazy=True)
            chowning.addErrback(self._refused)
            changes.append(chowning)
        if mode is not None and made.permissions is not None:
            want = new_perms(mode, stat.S_ISDIR(mode), p_mode)
            # Again after a chown, which clears the set-id bits.
            setid = changes and want & (stat.S_ISUID | stat.S_ISGID)
            if want != stat.S_IMODE(made.permissions) or setid:
                changes.append(setstat(path, FileAttrs(permissions=want), lazy=True))
        if not changes:
            return made
        for change in changes:
            change.addErrback(lambda f: None)  # the server may not: it keeps its own
        return await wait(client.lstat(path))
