"""
Fault suite, item 3 for the SFTP bridge proxy (``telenet.sftpproxy``): a telemount volume whose
server is a bridge in front of the sftp-agent, as ``telenet engage`` sets it up, with the
bridge killed mid-write, paused with SIGSTOP and restarted on the same port.

The bridge runs in a small process of its own (the daemon's ``open_bridge`` on the asyncio
reactor, as in the daemon), so that it can be killed and paused without touching the agent.
Counts are short by default and full with ``TELENET_FAULTS=full`` (see tests/faultkit.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from .conftest import Agent, Daemon, Telemount, free_port, port_open, run, wait_for
from .faultkit import FULL, FsyncedWriter, process_state, reads_back, record, scaled
from .test_e2e_telemount import create_volume, helper_pids, sleeping_container

pytestmark = pytest.mark.e2e

#: How long the bridge stays paused (30 s in the full run).
PAUSE = 30 if FULL else 8
#: The plug-in's timeout in these tests (conftest starts telemount with --timeout 3).
TIMEOUT = 3

BRIDGE = textwrap.dedent(
    """
    import sys
    from telenet.core.aio import install_asyncio_reactor
    install_asyncio_reactor()
    from twisted.internet import reactor
    from telenet import sftpproxy

    def opened(bridge):
        print("bridge listening on", bridge.listen_port, flush=True)
        reactor.addSystemEventTrigger("before", "shutdown", bridge.close)

    def failed(reason):
        print("bridge failed:", reason.getErrorMessage(), flush=True)
        reactor.stop()

    d = sftpproxy.open_bridge(
        reactor, f"tcp:{sys.argv[1]}:interface=127.0.0.1", "127.0.0.1", int(sys.argv[2])
    )
    d.addCallbacks(opened, failed)
    reactor.run()
    """
)


class Bridge:
    """The bridge process: a fixed local port in front of the agent's port."""

    def __init__(self, workdir: str, agent_port: int) -> None:
        self.port = free_port()
        self.agent_port = agent_port
        self.log_path = os.path.join(workdir, "bridge.log")
        self.starts = 0
        self.daemon = self._new()

    def _new(self) -> Daemon:
        args = [sys.executable, "-c", BRIDGE, str(self.port), str(self.agent_port)]
        return Daemon(args, self.log_path, env={"PYTHONPATH": os.getcwd()})

    def start(self) -> Bridge:
        self.starts += 1
        self.daemon = self._new().start()
        try:
            wait_for(
                lambda: self._listening() == self.starts or not self.daemon.alive(),
                20,
                "the bridge to listen",
            )
        except AssertionError:
            raise AssertionError(f"the bridge did not listen: {self.daemon.log()}") from None
        assert self.daemon.alive(), f"the bridge died: {self.daemon.log()}"
        assert port_open(self.port)
        return self

    def _listening(self) -> int:
        with open(self.log_path, errors="replace") as f:
            return f.read().count("bridge listening")

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid


@pytest.fixture
def bridge(workdir: str, sftp_agent: Agent) -> Iterator[Bridge]:
    b = Bridge(workdir, sftp_agent.port).start()
    yield b
    if b.daemon.alive():
        os.kill(b.pid, signal.SIGCONT)
    b.daemon.stop()


def _mountpoint(vol: str) -> str:
    out = run("docker", "volume", "inspect", vol).stdout
    return str(json.loads(out)[0]["Mountpoint"])


def _readable(mp: str) -> bool:
    return reads_back(os.path.join(mp, "token"), "s3cr3t-token\n")


def _restart_and_write(bridge: Bridge, mp: str, exported: str) -> float:
    """
    Start ``bridge`` again; once the mount reads again, a file written through it must reach
    the export. The seconds until it read again.
    """
    bridge.start()
    restarted = time.monotonic()
    wait_for(lambda: _readable(mp), 30, "the mount to recover after a restart", interval=0.5)
    recovered_after = time.monotonic() - restarted
    with open(os.path.join(mp, "after"), "w") as f:
        f.write("after the bridge came back\n")
    with open(os.path.join(exported, "after")) as f:
        assert f.read() == "after the bridge came back\n"
    return recovered_after


def test_bridge_killed_mid_write_acknowledged_data_is_on_disk(
    telemount: Telemount, sftp_agent: Agent, bridge: Bridge
) -> None:
    """
    kill -9 of the bridge while a writer appends fsync'd chunks through it and a reader reads
    a 16 MiB file over and over (its page cache dropped each time): both get an error within
    the timeout (no hang), the reader never gets wrong bytes, every chunk whose fsync succeeded
    is on the agent's disk byte for byte, and after the bridge restarts on the same port the
    mount works again (reads and a new write) without a remount.
    """
    exported = os.path.join(sftp_agent.root, "echo", "var", "run", "secrets")
    big = os.urandom(16 << 20)
    with open(os.path.join(exported, "big"), "wb") as big_file:
        big_file.write(big)
    vol, _ = create_volume(telemount, bridge.port)
    chunk = 256 * 1024
    reads = {"passes": 0, "corrupt": 0}
    read_error: list[BaseException] = []
    with sleeping_container(vol):
        mp = _mountpoint(vol)
        writer = FsyncedWriter(os.path.join(mp, "acked"), chunk)

        def reader() -> None:
            try:
                while True:
                    fd = os.open(os.path.join(mp, "big"), os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        offset = 0
                        while data := os.read(fd, 1 << 20):
                            reads["corrupt"] += data != big[offset : offset + len(data)]
                            offset += len(data)
                    finally:
                        os.close(fd)
                    reads["passes"] += 1
            except OSError as e:
                read_error.append(e)

        writer.start()
        error = writer.error
        reading = threading.Thread(target=reader, daemon=True)
        reading.start()
        wait_for(
            lambda: (writer.acked >= 8 and reads["passes"] >= 1) or bool(error or read_error),
            30,
            "the writer and the reader to get going",
        )
        assert not error and not read_error, (error, read_error)
        bridge.daemon.kill(signal.SIGKILL)
        killed = time.monotonic()
        writer.thread.join(timeout=TIMEOUT + 12)
        assert not writer.thread.is_alive(), "the writer hung after the bridge died"
        error_after = time.monotonic() - killed
        reading.join(timeout=max(0.1, killed + TIMEOUT + 12 - time.monotonic()))
        assert not reading.is_alive(), "the reader hung after the bridge died"
        read_error_after = time.monotonic() - killed
        assert error, "the writer got no error although the bridge died"
        assert read_error, "the reader got no error although the bridge died"
        assert error_after < TIMEOUT + 12
        assert reads["corrupt"] == 0, reads
        writer.assert_acked_on_disk(os.path.join(exported, "acked"))
        stuck = [pid for pid in helper_pids(telemount) if process_state(pid) == "D"]
        assert stuck == [], f"helpers in D state: {stuck}"

        recovered_after = _restart_and_write(bridge, mp, exported)
    record(
        "sftpproxy-kill-mid-write",
        acked_chunks=writer.acked,
        chunk_bytes=chunk,
        lost=0,
        error_after_s=round(error_after, 2),
        read_error_after_s=round(read_error_after, 2),
        read_passes=reads["passes"],
        recovered_after_s=round(recovered_after, 2),
        error=repr(error[0]),
        read_error=repr(read_error[0]),
    )


def test_bridge_paused_readers_fail_within_timeout_no_d_state(
    telemount: Telemount, sftp_agent: Agent, bridge: Bridge
) -> None:
    """
    SIGSTOP of the bridge (30 s in the full run, 8 s in CI) with a writer streaming through
    it: the writer, a reader and ``ls`` all finish within the timeout plus 10 s, no FUSE helper
    is left in D state, and after SIGCONT the mount works again. Then the paused bridge is
    killed and a new one started on the same port: the mount recovers again.
    """
    exported = os.path.join(sftp_agent.root, "echo", "var", "run", "secrets")
    vol, _ = create_volume(telemount, bridge.port)
    with sleeping_container(vol):
        mp = _mountpoint(vol)
        assert _readable(mp)
        # A writer mid-transfer when the bridge stops: fsync'd 64 KiB chunks in a loop.
        streamer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys\n"
                "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
                "while True:\n"
                "    os.write(fd, b'x' * 65536)\n"
                "    os.fsync(fd)\n",
                os.path.join(mp, "stream"),
            ],
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: (
                os.path.exists(os.path.join(exported, "stream"))
                and os.path.getsize(os.path.join(exported, "stream")) > 0
            ),
            20,
            "the streaming writer to get going",
        )
        os.kill(bridge.pid, signal.SIGSTOP)
        finished: dict[str, float] = {}
        try:
            paused = time.monotonic()
            procs = {
                "streamer": streamer,
                "cat": subprocess.Popen(
                    ["cat", os.path.join(mp, "token")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
                "write": subprocess.Popen(
                    ["sh", "-c", f"echo x > {mp}/new"], stderr=subprocess.DEVNULL
                ),
                "ls": subprocess.Popen(
                    ["ls", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                ),
            }
            for name, p in procs.items():
                try:
                    p.wait(timeout=max(0.1, paused + TIMEOUT + 10 - time.monotonic()))
                except subprocess.TimeoutExpired:
                    state = process_state(p.pid)
                    p.kill()
                    raise AssertionError(f"{name} hung (state {state})") from None
                finished[name] = round(time.monotonic() - paused, 2)
            assert streamer.returncode != 0, "the streaming writer did not notice the pause"
            assert any(p.returncode != 0 for p in procs.values())
            stuck = [pid for pid in helper_pids(telemount) if process_state(pid) == "D"]
            assert stuck == [], f"helpers in D state: {stuck}"
            time.sleep(max(0.0, PAUSE - (time.monotonic() - paused)))
        finally:
            if streamer.poll() is None:
                streamer.kill()
            os.kill(bridge.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: _readable(mp), 30, "the mount to recover after SIGCONT", interval=0.5)
        recovered_after_cont = time.monotonic() - resumed

        # Paused again, then replaced by a new bridge on the same port.
        os.kill(bridge.pid, signal.SIGSTOP)
        time.sleep(1)
        bridge.daemon.kill(signal.SIGKILL)
        recovered_after_restart = _restart_and_write(bridge, mp, exported)
    record(
        "sftpproxy-sigstop",
        paused_s=PAUSE,
        finished_after_s=finished,
        recovered_after_cont_s=round(recovered_after_cont, 2),
        recovered_after_restart_s=round(recovered_after_restart, 2),
    )


ROUNDS = scaled(3, 10)


def test_bridge_killed_after_unsynced_writes_close_reports_or_data_is_whole(
    telemount: Telemount, sftp_agent: Agent, bridge: Bridge
) -> None:
    """
    Writes that return before the server has confirmed them (the helper writes behind) are
    either on the agent's disk or reported as failed: 4 MiB are written without fsync, the
    bridge is killed at once, and then close() either fails or the whole file is on the
    agent's disk, byte for byte. Repeated, with the bridge restarted on the same port each
    time (the mount recovers without a remount).
    """
    exported = os.path.join(sftp_agent.root, "echo", "var", "run", "secrets")
    vol, _ = create_volume(telemount, bridge.port)
    chunk = 256 * 1024
    outcomes = {"close_ok_whole": 0, "close_failed": 0, "write_failed": 0}
    with sleeping_container(vol):
        mp = _mountpoint(vol)
        for r in range(ROUNDS):
            name = f"unsynced-{r}"
            expected = b"".join(bytes([(r + i) % 251]) * chunk for i in range(16))
            fd = os.open(os.path.join(mp, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                for i in range(16):
                    os.write(fd, expected[i * chunk : (i + 1) * chunk])
            except OSError:
                outcomes["write_failed"] += 1
                os.close(fd)
                fd = -1
            bridge.daemon.kill(signal.SIGKILL)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    outcomes["close_failed"] += 1
                else:
                    with open(os.path.join(exported, name), "rb") as written:
                        data = written.read()
                    assert data == expected, (r, len(data), len(expected))
                    outcomes["close_ok_whole"] += 1
            stuck = [pid for pid in helper_pids(telemount) if process_state(pid) == "D"]
            assert stuck == [], f"helpers in D state: {stuck}"
            bridge.start()
            wait_for(lambda: _readable(mp), 30, "the mount to recover", interval=0.5)
    record("sftpproxy-kill-after-unsynced-writes", rounds=ROUNDS, chunk_bytes=chunk, **outcomes)
    assert sum(outcomes.values()) == ROUNDS
