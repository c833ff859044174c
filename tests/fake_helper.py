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


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--host", "--port", "--mountpoint", "--control", "--log-file", "--timeout"):
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
    volumes: dict[str, dict[str, object]] = {}
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                request = json.loads(line)
                op = request.get("op")
                reply: dict[str, object] = {"ok": True}
                if op == "add":
                    if "missing" in request["path"]:
                        reply = {
                            "ok": False,
                            "error": f"remote directory {request['path']} does not exist",
                        }
                    else:
                        volumes[request["name"]] = {"path": request["path"], "ro": request["ro"]}
                elif op == "remove":
                    volumes.pop(request["name"], None)
                elif op == "status":
                    reply = {
                        "ok": True,
                        "pid": os.getpid(),
                        "host": args.host,
                        "port": int(args.port),
                        "mountpoint": args.mountpoint,
                        "connected": True,
                        "volumes": volumes,
                        "since": 0,
                    }
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()
                if op == "shutdown":
                    os.unlink(args.control)
                    sys.exit(0)


if __name__ == "__main__":
    main()
