"""``docker run`` argument parsing: every mount syntax, flag forms, and the merge rule."""

from __future__ import annotations

import re

import pytest

from telenet.cli.connection import CLIError
from telenet.cli.runflags import (
    Mount,
    RemoteMount,
    RunFlagsError,
    merge_remote_mounts,
    parse_mount,
    parse_run_args,
    parse_volume,
    volume_spec,
    with_nocopy,
)
from telenet.cli.workload import check_agent


def test_volume_short_form_is_a_named_volume_or_bind() -> None:
    """-v a:b names a volume; an absolute source is a bind; the target is normalized."""
    assert parse_volume("data:/data") == Mount("/data", "data", "volume", False, "volume")
    assert parse_volume("/tmp/x:/x/") == Mount("/x", "/tmp/x", "bind", False, "volume")


def test_volume_with_options() -> None:
    """-v a:b:ro is read-only; other modes (z, rw, nocopy) are accepted and not read-only."""
    assert parse_volume("data:/data:ro").readonly
    assert parse_volume("/a:/b:ro,z").readonly
    assert not parse_volume("/a:/b:rw").readonly
    assert not parse_volume("data:/b:nocopy").readonly


def test_anonymous_volume() -> None:
    """-v /target alone is an anonymous volume at that target."""
    assert parse_volume("/cache") == Mount("/cache", None, "volume", False, "volume")


@pytest.mark.parametrize(
    "spec, why",
    [
        ("data:relative", "absolute"),
        ("a:/b:c:d", "invalid volume"),
        (":/b", "empty source"),
        ("/a:/b:bogus", "unknown mode"),
    ],
)
def test_bad_volume_specs(spec: str, why: str) -> None:
    """Specs Docker refuses are refused with the spec in the message."""
    with pytest.raises(RunFlagsError, match=why) as e:
        parse_volume(spec)
    assert repr(spec) in str(e.value)


def test_mount_volume_with_short_keys_and_readonly() -> None:
    """--mount type=volume,src=…,dst=…,readonly."""
    assert parse_mount("type=volume,src=data,dst=/data,readonly") == Mount(
        "/data", "data", "volume", True, "mount"
    )


def test_mount_bind_with_long_keys() -> None:
    """--mount type=bind,source=…,target=… (and destination=, ro=true, readonly=false)."""
    assert parse_mount("type=bind,source=/tmp/x,target=/x") == Mount(
        "/x", "/tmp/x", "bind", False, "mount"
    )
    assert parse_mount("type=bind,source=/a,destination=/b,ro=true").readonly
    assert not parse_mount("type=volume,source=v,target=/b,readonly=false").readonly
    assert parse_mount("type=tmpfs,destination=/run").kind == "tmpfs"


def test_mount_csv_quoting() -> None:
    """Fields are CSV: a quoted field may hold a comma."""
    mount = parse_mount('type=volume,"source=a,b",target=/t')
    assert mount.source == "a,b"


@pytest.mark.parametrize(
    "spec, why",
    [
        ("type=volume,source=v", "target is required"),
        ("type=bind,source=/a,target=rel", "not absolute"),
        ("type=bind,source,target=/a", "key=value"),
        ("type=bind,source=/a,target=/b,readonly=maybe", "not a boolean"),
    ],
)
def test_bad_mounts(spec: str, why: str) -> None:
    """Malformed --mount values are refused, naming the problem."""
    with pytest.raises(RunFlagsError, match=why):
        parse_mount(spec)


def test_every_flag_form_finds_its_mounts() -> None:
    """-v x, -vx, -v=x, --volume x, --volume=x, --mount x, --mount=x, and -itv x clusters."""
    run = parse_run_args(
        [
            "-v",
            "a:/1",
            "-vb:/2",
            "-v=c:/3",
            "--volume",
            "d:/4",
            "--volume=e:/5",
            "--mount",
            "type=volume,src=f,dst=/6",
            "--mount=type=bind,source=/g,target=/7,readonly",
            "-itv",
            "h:/8",
            "local/busybox",
            "ls",
            "-v",
            "/9:/9",
        ]
    )
    assert [m.target for m in run.mounts()] == [f"/{i}" for i in range(1, 9)]
    assert run.image == "local/busybox"
    assert run.command == ("ls", "-v", "/9:/9")
    assert run.boolean("interactive") and run.boolean("tty")


def test_value_flags_do_not_end_the_options() -> None:
    """A flag's value that looks like an image (``--name web``) is not taken for the image."""
    run = parse_run_args(["--name", "web", "-p", "8080:80", "-e", "A=1", "--rm", "nginx"])
    assert run.image == "nginx"
    assert run.values("name") == ["web"]
    assert run.boolean("rm")
    assert run.command == ()


def test_booleans_with_values_and_double_dash() -> None:
    """--rm=false, -t=false and ``--`` before the image."""
    run = parse_run_args(["--rm=false", "-t=false", "--", "img", "--rm"])
    assert not run.boolean("rm") and not run.boolean("tty")
    assert run.image == "img" and run.command == ("--rm",)


def test_option_tokens_round_trip_and_drop() -> None:
    """The options can be given back to docker as given, without the dropped flags."""
    run = parse_run_args(["-d", "--sig-proxy=false", "-p", "1:1", "-itv", "x:/x", "img"])
    assert run.option_tokens(drop=("detach", "sig-proxy")) == [
        "-p",
        "1:1",
        "-i",
        "-t",
        "-v",
        "x:/x",
    ]
    assert run.tail() == ["img"]


def test_missing_values_and_unknown_shorthands() -> None:
    """A flag without its value, or an unknown shorthand, is refused as docker would."""
    with pytest.raises(RunFlagsError, match="needs an argument"):
        parse_run_args(["--name"])
    with pytest.raises(RunFlagsError, match="needs an argument"):
        parse_run_args(["-v"])
    with pytest.raises(RunFlagsError, match="unknown shorthand"):
        parse_run_args(["-Z", "img"])
    assert parse_run_args([]).image is None


def test_remote_mount_syntax() -> None:
    """--remote-mount PATH and PATH:ro; relative paths are refused."""
    assert RemoteMount.parse("/var/run/secrets:ro") == RemoteMount("/var/run/secrets", True)
    assert RemoteMount.parse("/data/") == RemoteMount("/data", False)
    with pytest.raises(RunFlagsError, match="absolute"):
        RemoteMount.parse("data")


def test_user_targets_win_over_remote_mounts() -> None:
    """A remote mount whose path the user mounts (any syntax) is skipped; others are kept."""
    remote = [
        RemoteMount("/var/run/secrets", True),
        RemoteMount("/data", False),
        RemoteMount("/etc/conf", False),
    ]
    user = parse_run_args(
        ["-v", "/tmp/d:/data/", "--mount", "type=bind,src=/c,dst=/etc/conf", "img"]
    ).mounts()
    kept, skipped = merge_remote_mounts(remote, user)
    assert kept == [RemoteMount("/var/run/secrets", True)]
    assert [m.path for m in skipped] == ["/data", "/etc/conf"]


# -- nocopy: Docker never copies an image's files into a telemount volume


def test_volume_spec_says_nocopy() -> None:
    """An engagement's own -v: nocopy always, ro first when read-only; Docker parses both back."""
    assert volume_spec("echo-0", "/etc", False) == "echo-0:/etc:nocopy"
    assert volume_spec("echo-0", "/etc", True) == "echo-0:/etc:ro,nocopy"
    ro = parse_volume(volume_spec("echo-0", "/etc", True))
    assert ro.readonly and ro.nocopy and ro.source == "echo-0"


def test_nocopy_is_read_from_either_syntax() -> None:
    """-v …:nocopy and --mount …,volume-nocopy[=BOOL] are seen as nocopy."""
    assert parse_volume("v:/a:ro,nocopy").nocopy
    assert not parse_volume("v:/a:copy").nocopy
    assert parse_mount("type=volume,src=v,dst=/a,volume-nocopy").nocopy
    assert parse_mount("type=volume,src=v,dst=/a,volume-nocopy=true").nocopy
    assert not parse_mount("type=volume,src=v,dst=/a,volume-nocopy=false").nocopy
    with pytest.raises(RunFlagsError, match="'maybe' is not a boolean"):
        parse_mount("type=volume,src=v,dst=/a,volume-nocopy=maybe")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-v", "tm:/a", "img"], ["-v", "tm:/a:nocopy"]),
        (["-v", "tm:/a:ro", "img"], ["-v", "tm:/a:ro,nocopy"]),
        (["-v", "tm:/a:ro,z", "img"], ["-v", "tm:/a:ro,z,nocopy"]),
        (["-v", "tm:/a:copy", "img"], ["-v", "tm:/a:nocopy"]),
        (["-v", "tm:/a:nocopy", "img"], ["-v", "tm:/a:nocopy"]),
        (["--volume", "tm:/a", "img"], ["--volume", "tm:/a:nocopy"]),
        (["--volume=tm:/a:ro", "img"], ["--volume=tm:/a:ro,nocopy"]),
        (["-vtm:/a", "img"], ["-vtm:/a:nocopy"]),
        (["-v=tm:/a", "img"], ["-v=tm:/a:nocopy"]),
        (["-itv", "tm:/a", "img"], ["-i", "-t", "-v", "tm:/a:nocopy"]),
        (
            ["--mount", "type=volume,source=tm,target=/a", "img"],
            ["--mount", "type=volume,source=tm,target=/a,volume-nocopy"],
        ),
        (
            ["--mount=type=volume,src=tm,dst=/a,readonly", "img"],
            ["--mount=type=volume,src=tm,dst=/a,readonly,volume-nocopy"],
        ),
        (
            ["--mount", "src=tm,dst=/a,volume-nocopy=false", "img"],
            ["--mount", "src=tm,dst=/a,volume-nocopy=false,volume-nocopy"],
        ),
        (
            ["--mount", "type=volume,src=tm,dst=/a,volume-nocopy", "img"],
            ["--mount", "type=volume,src=tm,dst=/a,volume-nocopy"],
        ),
    ],
)
def test_with_nocopy_in_every_syntax(args: list[str], expected: list[str]) -> None:
    """A mount of a named volume gets nocopy in the syntax it was written in."""
    run = with_nocopy(parse_run_args(args), {"tm"})
    assert run.option_tokens() == expected
    assert run.image == "img"
    assert [m.nocopy for m in run.mounts()] == [True]


def test_with_nocopy_leaves_other_mounts_alone() -> None:
    """Binds, anonymous volumes, tmpfs and volumes not named keep their copy-up."""
    args = [
        "-v",
        "/host:/h",
        "-v",
        "/anon",
        "-v",
        "local:/l",
        "--mount",
        "type=tmpfs,dst=/t",
        "--mount",
        "type=bind,src=/tm,dst=/b",
        "-v",
        "tm:/a",
        "img",
        "cmd",
    ]
    run = with_nocopy(parse_run_args(args), {"tm"})
    assert run.option_tokens() == [*args[:-4], "-v", "tm:/a:nocopy"]
    assert run.command == ("cmd",)


@pytest.mark.parametrize(
    "agent,message",
    [
        ("[fd00:96::5]:8022", None),
        ("[::ffff:10.96.0.5]:8022", None),
        ("10.96.0.5:8022", None),
        ("agent.svc:8022", None),
        ("fd00:96::5:8022", "write an IPv6 agent as [ADDRESS]:PORT"),
        ("[fd00:96::zz]:8022", "'fd00:96::zz' is not an IPv6 address"),
        ("[10.96.0.5]:8022", "'10.96.0.5' is not an IPv6 address"),
        ("[fd00:96::5]", "expected HOST:PORT"),
    ],
)
def test_agent_given_by_an_ipv6_address(agent: str, message: str | None) -> None:
    """An IPv6 agent is bracketed, as the daemon's bridges take it; bare IPv6 is refused early."""
    if message is None:
        check_agent(agent)
    else:
        with pytest.raises(CLIError, match=re.escape(message)):
            check_agent(agent)
