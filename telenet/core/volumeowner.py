"""
The ``uid``, ``gid`` and ``umask`` options of a telemount volume: the owner and mode mask every
file of the volume shows. One parser for the plug-in (``docker volume create -o``) and the CLI
(``telenet engage --mount-opt``), so both refuse a bad value with the same words.
"""

from __future__ import annotations

__all__ = ["MAX_ID", "OWNER_OPTIONS", "parse_owner_options"]

#: The largest uid/gid: (uid_t)-1 means "unchanged" to chown(2).
MAX_ID = 0xFFFFFFFE
OWNER_OPTIONS = ("uid", "gid", "umask")


def parse_owner_options(opts: dict[str, str]) -> tuple[int | None, int | None, int | None]:
    """(uid, gid, umask) from ``opts`` (None when absent); ValueError says what is wrong."""
    return _id(opts, "uid"), _id(opts, "gid"), _umask(opts)


def _id(opts: dict[str, str], key: str) -> int | None:
    if key not in opts:
        return None
    text = opts[key]
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ID:
        raise ValueError(f"{key} must be an unsigned integer between 0 and {MAX_ID}")
    return int(text)


def _umask(opts: dict[str, str]) -> int | None:
    if "umask" not in opts:
        return None
    text = opts["umask"]
    digits = text[2:] if text[:2] in ("0o", "0O") else text
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise ValueError("umask must be an octal number between 0 and 0777")
    return int(digits, 8)
