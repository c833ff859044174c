# -*- test-case-name: tests.test_cli_runflags -*-
"""
``docker run`` arguments as telenet needs to see them: which flags are set, where the image
is, and every mount target, in each syntax Docker accepts.

Docker's CLI parses with pflag: long flags ``--name value`` or ``--name=value``, short flags
``-v value``, ``-vvalue`` or ``-v=value``, and clusters of short booleans (``-it``, ``-itv
/a:/b``). A flag not known to be boolean is taken to have a value, as pflag does for every
non-boolean flag; ``--`` or the first non-flag argument is the image.

The merge rule of engagements (docs/cli.md, "docker-run and engage"): a mount target the
user gave with ``-v``, ``--volume`` or ``--mount`` wins over a remote mount at the same path.

Docker copies an image's files into an empty named volume the first time it is mounted unless
the mount says ``nocopy``: into a telemount volume that means writing them into the remote
container's directory. ``with_nocopy`` rewrites the user's mounts of such volumes, whichever
syntax they use, and ``volume_spec`` spells an engagement's own.
"""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Iterable

import attrs

from telenet.core.gocompat import parse_bool

#: Boolean flags of ``docker run`` (Docker 20.10 to 28), long name by short name where any.
BOOLEAN_FLAGS = frozenset(
    {
        "detach",
        "disable-content-trust",
        "help",
        "init",
        "interactive",
        "no-healthcheck",
        "oom-kill-disable",
        "privileged",
        "publish-all",
        "quiet",
        "read-only",
        "rm",
        "sig-proxy",
        "tty",
        "use-api-socket",
    }
)

SHORT_FLAGS = {
    "a": "attach",
    "c": "cpu-shares",
    "d": "detach",
    "e": "env",
    "h": "hostname",
    "i": "interactive",
    "l": "label",
    "m": "memory",
    "P": "publish-all",
    "p": "publish",
    "q": "quiet",
    "t": "tty",
    "u": "user",
    "v": "volume",
    "w": "workdir",
}


class RunFlagsError(ValueError):
    """Arguments ``docker run`` would refuse too; the message names the flag."""


@attrs.frozen
class Flag:
    """One flag as given: its long name, its value (None for a bare boolean), its tokens."""

    name: str
    value: str | None
    tokens: tuple[str, ...]


@attrs.frozen
class Mount:
    """A mount the user asked for: where it goes in the container, and from where."""

    target: str
    source: str | None
    kind: str
    readonly: bool
    flag: str
    nocopy: bool = False


@attrs.frozen
class RunArgs:
    """``docker run`` arguments split into flags, image and command."""

    flags: tuple[Flag, ...]
    image: str | None
    command: tuple[str, ...]

    def values(self, name: str) -> list[str | None]:
        return [f.value for f in self.flags if f.name == name]

    def boolean(self, name: str) -> bool:
        """The last setting of a boolean flag (``--rm``, ``--rm=false``), False if unset."""
        result = False
        for value in self.values(name):
            result = value is None or _parse_bool(value, name)
        return result

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.flags)

    def option_tokens(self, drop: Iterable[str] = ()) -> list[str]:
        """The flags' tokens as given, without the flags named in ``drop``."""
        dropped = set(drop)
        return [t for f in self.flags if f.name not in dropped for t in f.tokens]

    def tail(self) -> list[str]:
        """The image and the command (empty when the image is missing)."""
        return [self.image, *self.command] if self.image is not None else []

    def replace(self, flag: Flag, value: str) -> RunArgs:
        """These arguments with ``flag``'s value replaced, in the syntax it was given in."""
        assert flag.value is not None
        if len(flag.tokens) == 2:
            tokens: tuple[str, ...] = (flag.tokens[0], value)
        else:
            # --volume=SPEC, -vSPEC, -v=SPEC: the value ends the one token.
            token = flag.tokens[0]
            tokens = (token[: len(token) - len(flag.value)] + value,)
        new = Flag(flag.name, value, tokens)
        return attrs.evolve(self, flags=tuple(new if f is flag else f for f in self.flags))

    def mounts(self) -> list[Mount]:
        """Every ``-v``/``--volume`` and ``--mount`` of these arguments, in order."""
        found = []
        for f in self.flags:
            if f.name == "volume" and f.value is not None:
                found.append(parse_volume(f.value))
            elif f.name == "mount" and f.value is not None:
                found.append(parse_mount(f.value))
        return found


def _parse_bool(value: str, flag: str) -> bool:
    # pflag accepts Go's strconv.ParseBool spellings.
    try:
        return parse_bool(value)
    except ValueError:
        raise RunFlagsError(f"invalid argument {value!r} for --{flag}: not a boolean") from None


def parse_run_args(args: Iterable[str]) -> RunArgs:
    """Split ``docker run`` arguments (without ``docker run``) into flags, image and command."""
    items = list(args)
    flags: list[Flag] = []
    i = 0
    while i < len(items):
        token = items[i]
        if token == "--":
            i += 1
            break
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            if eq or name in BOOLEAN_FLAGS:
                flags.append(Flag(name, value if eq else None, (token,)))
                i += 1
                continue
            if i + 1 >= len(items):
                raise RunFlagsError(f"flag needs an argument: --{name}")
            flags.append(Flag(name, items[i + 1], (token, items[i + 1])))
            i += 2
            continue
        if token.startswith("-") and len(token) > 1:
            i = _short_cluster(items, i, flags)
            continue
        break
    image = items[i] if i < len(items) else None
    command = tuple(items[i + 1 :]) if image is not None else ()
    return RunArgs(tuple(flags), image, command)


def _short_cluster(items: list[str], i: int, flags: list[Flag]) -> int:
    """Parse ``-it``, ``-v x``, ``-vx``, ``-v=x``, ``-itv x``; return the next index."""
    token = items[i]
    letters = token[1:]
    for j, letter in enumerate(letters):
        name = SHORT_FLAGS.get(letter)
        if name is None:
            raise RunFlagsError(f"unknown shorthand flag: {letter!r} in {token}")
        if name in BOOLEAN_FLAGS:
            rest = letters[j + 1 :]
            if rest.startswith("="):
                # -t=false: the value belongs to this boolean, and ends the cluster.
                flags.append(Flag(name, rest[1:], (f"-{letter}{rest}",)))
                return i + 1
            flags.append(Flag(name, None, (f"-{letter}",)))
            continue
        rest = letters[j + 1 :]
        if rest:
            value = rest[1:] if rest.startswith("=") else rest
            # Booleans before it in the cluster were recorded on their own.
            flags.append(Flag(name, value, (f"-{letter}{rest}",)))
            return i + 1
        if i + 1 >= len(items):
            raise RunFlagsError(f"flag needs an argument: '{letter}' in -{letter}")
        flags.append(Flag(name, items[i + 1], (f"-{letter}", items[i + 1])))
        return i + 2
    return i + 1


_VOLUME_MODES = frozenset(
    {
        "ro",
        "rw",
        "z",
        "Z",
        "nocopy",
        "copy",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "private",
        "rprivate",
        "consistent",
        "cached",
        "delegated",
    }
)


def parse_volume(spec: str) -> Mount:
    """``-v [SOURCE:]TARGET[:OPTIONS]``: a named volume, a bind (absolute source) or anonymous."""
    parts = spec.split(":")
    if len(parts) == 1:
        source, target, options = None, parts[0], ""
    elif len(parts) == 2:
        source, target, options = parts[0], parts[1], ""
    elif len(parts) == 3:
        source, target, options = parts[0], parts[1], parts[2]
    else:
        raise RunFlagsError(f"invalid volume specification: {spec!r}")
    if not source and len(parts) > 1:
        raise RunFlagsError(f"invalid volume specification: {spec!r}: empty source")
    if not target.startswith("/"):
        raise RunFlagsError(
            f"invalid volume specification: {spec!r}: the target {target!r} is not an absolute path"
        )
    modes = [m for m in options.split(",") if m] if options else []
    for mode in modes:
        if mode not in _VOLUME_MODES:
            raise RunFlagsError(f"invalid volume specification: {spec!r}: unknown mode {mode!r}")
    kind = "volume" if source is None or not source.startswith("/") else "bind"
    return Mount(
        target=_clean(target),
        source=source,
        kind=kind,
        readonly="ro" in modes,
        flag="volume",
        nocopy="nocopy" in modes,
    )


def volume_spec(source: str, target: str, readonly: bool) -> str:
    """``-v`` of a telemount volume: never copied into (``nocopy``), ``ro`` when read-only."""
    return f"{source}:{target}:{'ro,' if readonly else ''}nocopy"


def parse_mount(spec: str) -> Mount:
    """``--mount type=…,source=…,target=…[,readonly]``: comma-separated, CSV quoting."""
    try:
        (fields,) = list(csv.reader([spec]))
    except (csv.Error, ValueError):
        raise RunFlagsError(f"invalid --mount {spec!r}: not comma-separated fields") from None
    kind, source, target, readonly, nocopy = "volume", None, None, False, False
    for field in fields:
        key, eq, value = field.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            readonly = True if not eq else _mount_bool(value, spec)
            continue
        if key == "volume-nocopy":
            nocopy = True if not eq else _mount_bool(value, spec)
            continue
        if not eq:
            raise RunFlagsError(f"invalid --mount {spec!r}: field {field!r} must be key=value")
        if key == "type":
            kind = value
        elif key in ("source", "src"):
            source = value
        elif key in ("target", "destination", "dst"):
            target = value
    if target is None:
        raise RunFlagsError(f"invalid --mount {spec!r}: target is required")
    if not target.startswith("/"):
        raise RunFlagsError(f"invalid --mount {spec!r}: target {target!r} is not absolute")
    return Mount(
        target=_clean(target),
        source=source or None,
        kind=kind,
        readonly=readonly,
        flag="mount",
        nocopy=nocopy,
    )


def _mount_bool(value: str, spec: str) -> bool:
    if value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise RunFlagsError(f"invalid --mount {spec!r}: {value!r} is not a boolean")


def with_nocopy(run: RunArgs, volumes: Iterable[str]) -> RunArgs:
    """
    ``run`` with every ``-v``/``--volume``/``--mount`` of one of the named ``volumes`` made
    ``nocopy``, in the syntax the user wrote it in; other mounts are left as they are.
    """
    names = set(volumes)
    for flag in run.flags:
        if flag.value is None or flag.name not in ("volume", "mount"):
            continue
        mount = parse_volume(flag.value) if flag.name == "volume" else parse_mount(flag.value)
        if mount.kind != "volume" or mount.source not in names or mount.nocopy:
            continue
        if flag.name == "mount":
            # Docker reads the fields in order: a last volume-nocopy wins over an earlier one.
            run = run.replace(flag, f"{flag.value},volume-nocopy")
            continue
        source, target, *options = flag.value.split(":")
        modes = [m for m in ",".join(options).split(",") if m and m != "copy"]
        run = run.replace(flag, f"{source}:{target}:{','.join([*modes, 'nocopy'])}")
    return run


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path != "/" else path


@attrs.frozen
class RemoteMount:
    """``--remote-mount PATH[:ro]``: a directory of the engaged container to mount."""

    path: str
    readonly: bool

    @classmethod
    def parse(cls, text: str, what: str = "--remote-mount") -> RemoteMount:
        """``PATH``, ``PATH:ro`` or ``PATH:rw``; the errors name ``what`` (the flag or key)."""
        path, readonly = text, False
        if text.endswith(":ro"):
            path, readonly = text[: -len(":ro")], True
        elif text.endswith(":rw"):
            path = text[: -len(":rw")]
        if not path.startswith("/"):
            raise RunFlagsError(f"{what} {text!r}: the path must be absolute")
        if ":" in path:
            raise RunFlagsError(f"{what} {text!r}: expected PATH or PATH:ro")
        return cls(_clean(path), readonly)


def merge_remote_mounts(
    remote: Iterable[RemoteMount], user: Iterable[Mount]
) -> tuple[list[RemoteMount], list[RemoteMount]]:
    """The remote mounts to make, and those skipped because the user mounts that target."""
    targets = {m.target for m in user}
    kept: list[RemoteMount] = []
    skipped: list[RemoteMount] = []
    for mount in remote:
        (skipped if mount.path in targets else kept).append(mount)
    return kept, skipped
