"""
A stand-in for ``python -m telenet.fuse.helper`` that speaks the helper's contract without FUSE.

It reports ready (or the error named by $FAKE_HELPER_ERROR), serves the control socket with
add/remove/status/shutdown, and treats remote paths containing "missing" as absent. Used to
test ``ProcessMounter``'s process handling on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

# Run as a script (tests/ is sys.path[0]): the protocol must come from this checkout, not
# from whichever telenet the interpreter has installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telenet.fuse.protocol import (  # noqa: E402
    AddVolume,
    Answer,
    Done,
    ProtocolError,
    Refused,
    RemoveVolume,
    Request,
    Shutdown,
    Status,
    StatusReport,
    VolumeState,
    decode_request,
    encode,
    parse_line,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in (
        "--host",
        "--port",
        "--mountpoint",
        "--control",
        "--log-file",
        "--timeout",
        "--wait",
    ):
        parser.add_argument(flag)
    args = parser.parse_args()
    os.setsid()
    error = os.environ.get("FAKE_HELPER_ERROR")
    if error == "die":
        sys.stderr.write("fake helper crashed on purpose\n")
        sys.exit(7)
    if error == "hang":
        time.sleep(3600)
    if error:
        print(json.dumps({"error": error}), flush=True)
        sys.exit(1)
    server = socket.socket(socket.AF_UNIX)
    server.bind(args.control)
    server.listen(16)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    volumes: dict[str, VolumeState] = {}
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    request = decode_request(parse_line(line))
                except ProtocolError as e:
                    stream.write(encode(Refused(str(e))) + b"\n")
                    stream.flush()
                    continue
                stream.write(encode(answer(request, volumes, args)) + b"\n")
                stream.flush()
                if isinstance(request, Shutdown):
                    os.unlink(args.control)
                    sys.exit(0)


def answer(request: Request, volumes: dict[str, VolumeState], args: argparse.Namespace) -> Answer:
    match request:
        case AddVolume(name=name, path=path, ro=ro):
            if "missing" in path:
                return Refused(f"remote directory {path} does not exist")
            volumes[name] = VolumeState(path=path, ro=ro)
        case RemoveVolume(name=name):
            volumes.pop(name, None)
        case Status():
            return StatusReport(
                pid=os.getpid(),
                host=args.host,
                port=int(args.port),
                mountpoint=args.mountpoint,
                connected=True,
                volumes=dict(volumes),
                since=0,
            )
    return Done()


if __name__ == "__main__":
    main()
