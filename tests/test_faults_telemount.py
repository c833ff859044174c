"""
Fault suite for telemount: items 1 (kill -9 of the plug-in during a create/mount/unmount/remove
loop), 3 (the sftp-agent killed mid-write and paused with SIGSTOP) and 7 (SIGTERM while a volume
is in use and a request is in flight).

Counts are short by default and full with ``TELENET_FAULTS=full`` (see tests/faultkit.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import Agent, Telemount, _unix_answers, fuse_mounts, run, wait_for
from .faultkit import FULL, FsyncedWriter, post, process_state, reads_back, record, scaled
from .test_e2e_telemount import busybox, create_volume, helper_pids, sleeping_container

pytestmark = pytest.mark.e2e

KILLS = scaled(4, 20)


def test_kill_9_during_volume_loop_loses_nothing(telemount: Telemount, sftp_agent: Agent) -> None:
    """
    kill -9 of ``twistd telemount`` at random points while a loop creates, mounts (writes a
    file), unmounts and removes volumes: after each restart every volume Docker lists is
    served, every write Docker saw succeed is on the agent's disk, and every volume whose
    create succeeded (and whose remove did not) is still known.
    """
    exported = os.path.join(sftp_agent.root, "echo", "var", "run", "secrets")
    stop = threading.Event()
    created: set[str] = set()
    removed: set[str] = set()
    # A remove Docker reported failed may still have happened: the plug-in removed the volume
    # and was killed before answering, and dockerd's retry then got "no such volume".
    remove_failed: set[str] = set()
    written: dict[str, str] = {}
    ops = {"ok": 0, "failed": 0}
    # dockerd 20.10 now and then sits on a volume call for minutes during this loop without
    # calling the plug-in at all (nothing in its log); such a call is counted, not fatal.
    stalls: list[str] = []

    def attempt(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``, or None when dockerd stalled past the call's timeout."""
        try:
            return call(*args, **kwargs)
        except subprocess.TimeoutExpired as e:
            stalls.append(" ".join(str(a) for a in e.cmd))
            return None

    def loop() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            made = attempt(create_volume, telemount, sftp_agent.port, check=False)
            if made is None or made[1].returncode != 0:
                ops["failed"] += 1
                continue
            vol = made[0]
            ops["ok"] += 1
            created.add(vol)
            token = f"{vol}-{rng.random()}"
            out = attempt(
                busybox,
                "sh",
                "-c",
                f"echo {token} > /s/{vol}",
                volumes=(f"{vol}:/s",),
                check=False,
                timeout=90,
                driver=telemount.name,
            )
            if out is not None and out.returncode == 0:
                written[vol] = token
                ops["ok"] += 1
            else:
                ops["failed"] += 1
            if rng.random() < 0.5:
                rm = attempt(run, "docker", "volume", "rm", vol, check=False, timeout=90)
                if rm is not None and rm.returncode == 0:
                    removed.add(vol)
                    ops["ok"] += 1
                else:
                    remove_failed.add(vol)
                    ops["failed"] += 1

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    rng = random.Random(2)
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 2.5))
            telemount.daemon.kill(signal.SIGKILL)
            time.sleep(rng.uniform(0, 0.5))
            telemount.start()
    finally:
        stop.set()
        worker.join(timeout=180)
    assert not worker.is_alive(), "the operation loop hung"
    assert _unix_answers(telemount.socket), (
        f"the restarted plug-in does not answer: {telemount.daemon.log()}"
    )
    # Nothing Docker saw succeed is lost.
    for vol, token in written.items():
        with open(os.path.join(exported, vol)) as f:
            assert f.read().strip() == token, vol
    listed = set(telemount.volumes())
    kept = created - removed - remove_failed
    assert kept <= listed, f"volumes lost: {sorted(kept - listed)}"
    # Every volume the plug-in has is served. That includes one it saved while Docker's
    # create failed (killed mid-call): Docker has no record of it, so the driver is named, or
    # dockerd would first ask every dead plug-in of earlier tests (~15 s each).
    for vol in sorted(listed):
        out = busybox("cat", "/s/token", volumes=(f"{vol}:/s",), timeout=90, driver=telemount.name)
        assert out.stdout == "s3cr3t-token\n", vol
    record(
        "kill9-telemount",
        kills=KILLS,
        ops_ok=ops["ok"],
        ops_failed=ops["failed"],
        volumes_checked=len(listed),
        removes_failed=len(remove_failed),
        dockerd_stalls=len(stalls),
        writes_checked=len(written),
    )
    assert ops["ok"] >= KILLS


def _mountpoint(vol: str) -> str:
    out = run("docker", "volume", "inspect", vol).stdout
    return str(json.loads(out)[0]["Mountpoint"])


def test_agent_killed_mid_write_acknowledged_data_is_on_disk(
    telemount: Telemount, sftp_agent: Agent
) -> None:
    """
    The agent is killed while a writer appends fsync'd chunks: the writer gets an error within
    the timeout (no hang), and every chunk whose fsync succeeded is on the agent's disk.
    """
    exported = os.path.join(sftp_agent.root, "echo", "var", "run", "secrets")
    vol, _ = create_volume(telemount, sftp_agent.port)
    chunk = 256 * 1024
    with sleeping_container(vol):
        writer = FsyncedWriter(os.path.join(_mountpoint(vol), "acked"), chunk).start()
        wait_for(lambda: writer.acked >= 8 or bool(writer.error), 30, "the writer to get going")
        sftp_agent.daemon.kill(signal.SIGKILL)
        killed = time.monotonic()
        writer.thread.join(timeout=15)
        assert not writer.thread.is_alive(), "the writer hung after the agent died"
        assert writer.error, "the writer got no error although the agent died"
        assert time.monotonic() - killed < 15
        writer.assert_acked_on_disk(os.path.join(exported, "acked"))
        sftp_agent.start()

        token = os.path.join(_mountpoint(vol), "token")
        wait_for(
            lambda: reads_back(token, "s3cr3t-token\n"), 30, "the mount to recover", interval=0.5
        )
    record("sftp-agent-kill-mid-write", acked_chunks=writer.acked, chunk_bytes=chunk, lost=0)


PAUSE = 30 if FULL else 8


def test_agent_paused_readers_fail_within_timeout_no_d_state(
    telemount: Telemount, sftp_agent: Agent
) -> None:
    """
    SIGSTOP of the agent: readers and writers fail within the timeout (3 s here) plus slack,
    none stays in D state, and after SIGCONT the mount works again.
    """
    vol, _ = create_volume(telemount, sftp_agent.port)
    with sleeping_container(vol):
        mp = _mountpoint(vol)
        assert sftp_agent.daemon.proc is not None
        os.kill(sftp_agent.daemon.proc.pid, signal.SIGSTOP)
        try:
            paused = time.monotonic()
            procs = [
                subprocess.Popen(
                    ["cat", os.path.join(mp, "token")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
                subprocess.Popen(["sh", "-c", f"echo x > {mp}/new"], stderr=subprocess.DEVNULL),
                subprocess.Popen(
                    ["ls", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                ),
            ]
            for p in procs:
                try:
                    p.wait(timeout=3 + 10)
                except subprocess.TimeoutExpired:
                    state = process_state(p.pid)
                    p.kill()
                    raise AssertionError(f"{p.args!r} hung (state {state})") from None
            assert any(p.returncode != 0 for p in procs), [p.returncode for p in procs]
            stuck = [pid for pid in helper_pids(telemount) if process_state(pid) == "D"]
            assert stuck == [], f"helpers in D state: {stuck}"
            time.sleep(max(0.0, PAUSE - (time.monotonic() - paused)))
        finally:
            os.kill(sftp_agent.daemon.proc.pid, signal.SIGCONT)

        token = os.path.join(mp, "token")
        wait_for(
            lambda: reads_back(token, "s3cr3t-token\n"),
            30,
            "the mount to recover after SIGCONT",
            interval=0.5,
        )
    record("sftp-agent-sigstop", paused_s=PAUSE)


def test_sigterm_with_volume_in_use_and_request_in_flight(
    telemount: Telemount, sftp_agent: Agent
) -> None:
    """
    SIGTERM while a container uses a volume and a Create is in flight: the in-flight request is
    answered, the plug-in exits within 10 s, no FUSE mount and no helper process is left.
    """
    vol, _ = create_volume(telemount, sftp_agent.port)
    # A server that accepts connections and never speaks: a Create for it checks that it
    # answers, which takes the plug-in's timeout (3 s).
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    opts = {"host": "127.0.0.1", "port": str(mute.getsockname()[1]), "container": "echo"}
    assert telemount.daemon.proc is not None
    with sleeping_container(vol), mute:
        assert fuse_mounts(telemount.mount_root)
        answer: list[tuple[int, bytes]] = []
        body = json.dumps({"Name": "tntest-inflight", "Opts": opts}).encode()
        t = threading.Thread(
            target=lambda: answer.append(
                post(telemount.socket, "/VolumeDriver.Create", body, timeout=20)
            )
        )
        t.start()
        time.sleep(0.5)
        started = time.monotonic()
        telemount.daemon.proc.send_signal(signal.SIGTERM)
        telemount.daemon.proc.wait(timeout=12)
        elapsed = time.monotonic() - started
        t.join(timeout=10)
        assert elapsed <= 10, f"SIGTERM took {elapsed:.1f}s"
        assert answer and answer[0][0] != 0, telemount.daemon.log()[-3000:]
        assert fuse_mounts(telemount.mount_root) == []
        assert helper_pids(telemount) == []
        telemount.start()
    record("sigterm-telemount", exit_s=round(elapsed, 2), inflight_status=answer[0][0])
