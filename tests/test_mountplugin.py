"""The telemount volume driver against memory fakes: options, refcounts, persistence."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import defer, task

from telenet.core.dockerplugin import PluginResource
from telenet.core.gocompat import parse_duration, safe_name
from telenet.mountplugin import Options, Volume, VolumeDriver, parse_options
from telenet.testing import MemoryMounter, MemoryStateStore

from .helpers import DOCKERD_CAPTURES, dockerd_calls, result_of

OPTS = {"container": "echo", "dir": "/var/run/secrets", "host": "172.17.0.2", "port": "8022"}


def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class Harness:
    def __init__(
        self, store: MemoryStateStore | None = None, mounter: MemoryMounter | None = None
    ) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.store = store or MemoryStateStore()
        self.mounter = mounter or MemoryMounter()
        self.driver = VolumeDriver(self.mounter, self.store, self.clock, run_now)
        self.driver.restore()
        self.stub = StubTreq(PluginResource(["VolumeDriver"], self.driver.handlers()))

    def call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        response = result_of(self.stub.post("http://p" + path, data=json.dumps(body or {})))
        return response.code, json.loads(result_of(response.content()))

    def ok(self, path: str, body: dict[str, Any] | None = None) -> Any:
        code, answer = self.call(path, body)
        assert code == 200, answer
        return answer

    def err(self, path: str, body: dict[str, Any] | None = None) -> str:
        code, answer = self.call(path, body)
        assert code >= 400, answer
        return str(answer["Err"])


@pytest.mark.parametrize("version", DOCKERD_CAPTURES)
def test_dockerd_volume_story_replays(version: str) -> None:
    """Every call dockerd made in the captured story gets an answer of the captured shape."""
    h = Harness()
    for call in dockerd_calls(version)["volume_calls"]:
        code, answer = h.call(call["path"], call["request"])
        expected = call["answer_docker_accepted"]
        if call["request"].get("Opts", {}).get("bogus"):
            # The capture plug-in accepted anything; we refuse an illegal option.
            assert answer == {"Err": 'illegal option "bogus"'}
            continue
        name = call["request"].get("Name", "")
        if name == "bad" or name.endswith("-bad"):
            assert answer == {"Err": f'no such volume: "{name}"'}
            continue
        if "Err" in expected:
            assert code == 500 and answer["Err"].startswith("no such volume")
        else:
            assert code == 200, answer
            assert set(answer) == set(expected), (call["path"], answer)
    assert h.mounter.servers == {}


def test_create_mounts_eagerly_and_get_reports() -> None:
    """Create attaches the volume at once; Get shows where and what it is."""
    h = Harness()
    assert h.ok("/VolumeDriver.Create", {"Name": "echo-0", "Opts": OPTS}) == {}
    assert h.mounter.servers == {
        ("172.17.0.2", 8022): {"echo-0": ("/tel_app_exports/echo/var/run/secrets", False)}
    }
    volume = h.ok("/VolumeDriver.Get", {"Name": "echo-0"})["Volume"]
    assert volume["Mountpoint"] == "/mnt/volumes/172.17.0.2/8022/echo-0"
    assert volume["CreatedAt"] == "2023-11-14T22:13:20Z"
    assert volume["Status"] == {
        "host": "172.17.0.2",
        "port": 8022,
        "container": "echo",
        "remoteDir": "/tel_app_exports/echo/var/run/secrets",
        "ro": False,
        "usedBy": [],
    }


def test_list_is_sorted_and_capabilities_local() -> None:
    """List is sorted by name; the scope is local."""
    h = Harness()
    for name in ("b", "a", "c"):
        h.ok("/VolumeDriver.Create", {"Name": name, "Opts": OPTS})
    assert [v["Name"] for v in h.ok("/VolumeDriver.List")["Volumes"]] == ["a", "b", "c"]
    assert h.ok("/VolumeDriver.Capabilities") == {"Capabilities": {"Scope": "local"}}


@pytest.mark.parametrize(
    "opts, message",
    [
        ({**OPTS, "bogus": "1"}, 'illegal option "bogus"'),
        ({"port": "8022"}, 'missing required option "container"'),
        ({"container": "echo"}, 'missing required option "port"'),
        ({"container": "echo", "port": "0"}, 'missing required option "port"'),
        (
            {"container": "echo", "port": "70000"},
            "port must be an unsigned integer between 1 and 65535",
        ),
        (
            {"container": "echo", "port": "-1"},
            "port must be an unsigned integer between 1 and 65535",
        ),
        (
            {"container": "echo", "port": "x"},
            "port must be an unsigned integer between 1 and 65535",
        ),
        ({**OPTS, "ro": "yes"}, "ro must be a boolean"),
        (
            {**OPTS, "dir": "../other"},
            'dir "../other" leaves the export of container "echo" (/tel_app_exports/echo)',
        ),
        ({**OPTS, "dir": "a/../../.."}, "leaves the export"),
        ({**OPTS, "container": ".."}, "is not a container name"),
        ({**OPTS, "container": "a/b"}, "is not a container name"),
        ({**OPTS, "host": "bad host!"}, "failed to parse host address bad host!"),
        ({**OPTS, "host": "[10.0.0.1]"}, "failed to parse host address [10.0.0.1]"),
        ({**OPTS, "host": "[fd00::2"}, "failed to parse host address [fd00::2"),
        ({**OPTS, "uid": "-1"}, "uid must be an unsigned integer between 0 and 4294967294"),
        ({**OPTS, "uid": "4294967295"}, "uid must be an unsigned integer between 0"),
        ({**OPTS, "gid": "x"}, "gid must be an unsigned integer between 0 and 4294967294"),
        ({**OPTS, "gid": ""}, "gid must be an unsigned integer"),
        ({**OPTS, "uid": "١"}, "uid must be an unsigned integer"),  # an Arabic-Indic 1
        ({**OPTS, "umask": "8"}, "umask must be an octal number between 0 and 0777"),
        ({**OPTS, "umask": "01000"}, "umask must be an octal number between 0 and 0777"),
        ({**OPTS, "umask": ""}, "umask must be an octal number"),
        ({**OPTS, "umask": "0o"}, "umask must be an octal number"),
        ({**OPTS, "timeout": "soon"}, 'timeout "soon" is not a duration such as 10s or 1m30s'),
        ({**OPTS, "timeout": "-1"}, "timeout must be between 0s and 300s"),
        ({**OPTS, "timeout": "1h"}, "timeout must be between 0s and 300s"),
    ],
)
def test_bad_options_are_refused_with_our_message(opts: dict[str, str], message: str) -> None:
    """Bad -o options reach the user as the Go plug-in's (or our clearer) message."""
    h = Harness()
    assert message in h.err("/VolumeDriver.Create", {"Name": "v", "Opts": opts})
    assert h.driver.volumes == {} and h.store.saves == 0


def test_option_defaults_and_forms() -> None:
    """host defaults to localhost, dir to the container's export; ro takes Go's booleans."""
    o = parse_options({"container": "c", "port": "1"})
    assert (o.host, o.remote_dir, o.ro) == ("localhost", "/tel_app_exports/c", False)
    assert parse_options({"container": "c", "port": "1", "ro": "T"}).ro is True
    assert parse_options({"container": "c", "port": "1", "host": "::1"}).host == "::1"
    assert parse_options({"container": "c", "port": "1", "dir": "a/./b/../c/"}).remote_dir == (
        "/tel_app_exports/c/a/c"
    )


@pytest.mark.parametrize("given", ["fd00:30::2", "[fd00:30::2]", "FD00:30:0::2", "[fd00:30::0002]"])
def test_ipv6_agent_host_in_any_spelling_is_one_server(given: str) -> None:
    """An agent given by an IPv6 address, bracketed or not: the canonical literal, no brackets
    (what the helper's HostnameEndpoint connects to; one helper and mount for all spellings)."""
    assert parse_options({"container": "c", "port": "8022", "host": given}).host == "fd00:30::2"


def test_owner_options() -> None:
    """uid, gid and umask reach the mounter's spec; absent, the server's own are shown."""
    o = parse_options({"container": "c", "port": "1", "uid": "1000", "gid": "0", "umask": "022"})
    assert (o.uid, o.gid, o.umask) == (1000, 0, 0o22)
    spec = o.spec("v")
    assert (spec.uid, spec.gid, spec.umask) == (1000, 0, 0o22)
    assert parse_options({"container": "c", "port": "1", "umask": "0o77"}).umask == 0o77
    plain = parse_options({"container": "c", "port": "1"})
    assert (plain.uid, plain.gid, plain.umask) == (None, None, None)


def test_owner_options_are_saved_and_sent_to_the_helper() -> None:
    """They survive a restart (saved with the volume) and go to the mounter's attach."""
    h = Harness()
    h.ok("/VolumeDriver.Create", {"Name": "v", "Opts": {**OPTS, "uid": "1000", "umask": "7"}})
    entry = h.store.load()["volumes"]["v"]
    saved = entry["options"]
    assert (saved["uid"], saved["gid"], saved["umask"]) == (1000, None, 7)
    restored = Volume.from_json("v", entry)
    assert restored.options.uid == 1000
    old = {k: v for k, v in saved.items() if k not in ("uid", "gid", "umask")}
    assert Volume.from_json("v", {"options": old, "created_at": 1}).options.uid is None


def test_mount_is_refcounted_by_id_and_remove_refused_in_use() -> None:
    """Mount/Unmount count callers by ID; Remove is refused while any caller remains."""
    h = Harness()
    h.ok("/VolumeDriver.Create", {"Name": "v", "Opts": OPTS})
    mp = h.ok("/VolumeDriver.Mount", {"Name": "v", "ID": "c1"})["Mountpoint"]
    assert mp == "/mnt/volumes/172.17.0.2/8022/v"
    h.ok("/VolumeDriver.Mount", {"Name": "v", "ID": "c1"})
    h.ok("/VolumeDriver.Mount", {"Name": "v", "ID": "c2"})
    assert h.err("/VolumeDriver.Remove", {"Name": "v"}) == (
        "volume v is mounted by containers: [c1 c2]"
    )
    h.ok("/VolumeDriver.Unmount", {"Name": "v", "ID": "c1"})
    assert "mounted by containers: [c2]" in h.err("/VolumeDriver.Remove", {"Name": "v"})
    h.ok("/VolumeDriver.Unmount", {"Name": "v", "ID": "c2"})
    h.ok("/VolumeDriver.Remove", {"Name": "v"})
    assert h.mounter.servers == {}
    assert h.err("/VolumeDriver.Get", {"Name": "v"}) == 'no such volume: "v"'


def test_ro_and_rw_volumes_share_a_server() -> None:
    """Unlike the Go plug-in, a read-only and a writable volume of one server coexist."""
    h = Harness()
    h.ok("/VolumeDriver.Create", {"Name": "ro", "Opts": {**OPTS, "ro": "true"}})
    h.ok("/VolumeDriver.Create", {"Name": "rw", "Opts": OPTS})
    assert h.mounter.servers[("172.17.0.2", 8022)] == {
        "ro": ("/tel_app_exports/echo/var/run/secrets", True),
        "rw": ("/tel_app_exports/echo/var/run/secrets", False),
    }


def test_create_failure_records_nothing() -> None:
    """When the server cannot be mounted, Create fails with the reason and keeps no volume."""
    h = Harness()
    h.mounter.unreachable.add(("172.17.0.2", 8022))
    assert h.err("/VolumeDriver.Create", {"Name": "v", "Opts": OPTS}) == (
        "cannot reach SFTP server at 172.17.0.2:8022"
    )
    assert h.driver.volumes == {} and h.store.saves == 0


def test_create_is_idempotent_but_refuses_other_options() -> None:
    """Creating an existing volume again is fine with the same options, an error with others."""
    h = Harness()
    h.ok("/VolumeDriver.Create", {"Name": "v", "Opts": OPTS})
    h.ok("/VolumeDriver.Create", {"Name": "v", "Opts": OPTS})
    assert "already exists with other options" in h.err(
        "/VolumeDriver.Create", {"Name": "v", "Opts": {**OPTS, "ro": "1"}}
    )


def test_volumes_and_users_survive_a_restart() -> None:
    """A new driver on the same store knows the volumes and who mounts them."""
    h = Harness()
    h.ok("/VolumeDriver.Create", {"Name": "v", "Opts": OPTS})
    h.ok("/VolumeDriver.Mount", {"Name": "v", "ID": "c1"})
    again = Harness(store=h.store)
    assert again.ok("/VolumeDriver.List")["Volumes"] == [
        {"Name": "v", "Mountpoint": "/mnt/volumes/172.17.0.2/8022/v"}
    ]
    assert "mounted by containers: [c1]" in again.err("/VolumeDriver.Remove", {"Name": "v"})
    assert again.driver.expected_mounts() == {
        ("172.17.0.2", 8022): {"v": ("/tel_app_exports/echo/var/run/secrets", False)}
    }
    again.ok("/VolumeDriver.Mount", {"Name": "v", "ID": "c2"})
    assert again.mounter.servers[("172.17.0.2", 8022)]["v"][1] is False


def test_unreadable_saved_entries_are_skipped() -> None:
    """A damaged entry in the saved state costs that entry, not the plug-in."""
    store = MemoryStateStore(
        {
            "volumes": {
                "bad": {"options": {}},
                "good": {
                    "options": {"host": "h", "port": 1, "container": "c", "dir": "", "ro": False},
                    "created_at": 5,
                    "used_by": [],
                },
            }
        }
    )
    h = Harness(store=store)
    assert list(h.driver.volumes) == ["good"]


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../x", "a" * 300, "é"])
def test_bad_volume_names_refused(name: str) -> None:
    """Names Docker would never send (path tricks included) are refused before any work."""
    h = Harness()
    assert "invalid volume name" in h.err("/VolumeDriver.Create", {"Name": name, "Opts": OPTS})


def test_safe_name_like_go() -> None:
    """Host names become directory names the way the Go plug-in makes them."""
    assert safe_name("127.0.0.1") == "127.0.0.1"
    assert safe_name("::1") == "a_1"
    assert safe_name("fe80::1%eth0") == "fe80__1_eth0"


def test_disconnected_unused_mounts_are_released_after_linger() -> None:
    """Like the Go plug-in's linger: an unused mount disconnected for too long is unmounted."""
    h = Harness()
    h.ok("/VolumeDriver.Create", {"Name": "idle", "Opts": OPTS})
    h.ok("/VolumeDriver.Create", {"Name": "busy", "Opts": {**OPTS, "port": "9000"}})
    h.ok("/VolumeDriver.Mount", {"Name": "busy", "ID": "c1"})
    for port in (8022, 9000):
        h.mounter.unreachable.add(("172.17.0.2", port))
        h.mounter.since[("172.17.0.2", port)] = h.clock.seconds()
    h.clock.advance(3)
    result_of(defer.ensureDeferred(h.driver.reap_disconnected(5, 1)))
    assert ("172.17.0.2", 8022) in h.mounter.servers  # not yet: 3s < 5s
    h.clock.advance(3)
    result_of(defer.ensureDeferred(h.driver.reap_disconnected(5, 1)))
    assert ("172.17.0.2", 8022) not in h.mounter.servers
    assert ("172.17.0.2", 9000) in h.mounter.servers  # a container uses it
    # The volume stays; the next Mount mounts again once the server is back.
    h.mounter.unreachable.clear()
    h.ok("/VolumeDriver.Mount", {"Name": "idle", "ID": "c2"})
    assert ("172.17.0.2", 8022) in h.mounter.servers


@pytest.mark.parametrize(
    "text, seconds",
    [("5s", 5), ("500ms", 0.5), ("1m30s", 90), ("2", 2), ("1.5h", 5400), ("250us", 0.00025)],
)
def test_go_durations(text: str, seconds: float) -> None:
    """Durations are read the way the Go plug-in's environment variables were."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "s", "1s2", "-"])
def test_bad_durations(text: str) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_options_take_durations_and_refuse_nonsense() -> None:
    """The tap's options parse durations and refuse bad ones with a usage error."""
    from twisted.python import usage

    options = Options()
    options.parseOptions(["--linger", "10s", "--ping-timeout", "250ms", "--timeout", "3"])
    assert (options["linger"], options["ping-timeout"], options["timeout"]) == (10, 0.25, 3)
    with pytest.raises(usage.UsageError, match="--linger must be a duration"):
        Options().parseOptions(["--linger", "soon"])


def test_timeout_is_the_first_connections_wait() -> None:
    """
    -o timeout=DURATION reaches the mounter as the volume's wait, at Create and at Mount, and
    survives a restart; absent, one try. It does not make a volume another: creating it again
    with another timeout is the same volume.
    """
    assert parse_options({"container": "c", "port": "1"}).wait == 0
    assert parse_options({"container": "c", "port": "1", "timeout": "1m30s"}).wait == 90
    assert parse_options({"container": "c", "port": "1", "timeout": "2.5"}).wait == 2.5
    h = Harness()
    h.ok("/VolumeDriver.Create", {"Name": "v", "Opts": {**OPTS, "timeout": "5s"}})
    assert h.mounter.attached[-1].wait == 5
    h.ok("/VolumeDriver.Create", {"Name": "v", "Opts": {**OPTS, "timeout": "1s"}})
    h.ok("/VolumeDriver.Create", {"Name": "v", "Opts": OPTS})
    again = Harness(store=h.store)
    again.ok("/VolumeDriver.Mount", {"Name": "v", "ID": "c1"})
    assert again.mounter.attached[-1].wait == 5
