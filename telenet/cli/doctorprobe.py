# -*- test-case-name: tests.test_cli_doctor -*-
"""
What ``telenet doctor`` asks from inside the daemon container and of this machine.

``daemon_probe`` runs one small Python program in the daemon container through ``docker
exec`` (so it works for an engine in a VM or elsewhere, like ``ExecControl``): whether the
teleroute gRPC port accepts connections on the daemon's loopback, whether ``br-daemon`` is
there, whether a DNS server (the daemon's, the cluster's) answers each name, and whether each
SFTP bridge's agent accepts connections, as the daemon reaches it. The answer is one JSON object.

``telemount_mounts`` and ``stale`` read this machine's mount table: a telemount FUSE mount
whose helper is gone answers every call with ENOTCONN ("Transport endpoint is not
connected").

Separate from the checks so that they can be driven by fakes: ``MemoryDocker.exec_handler``
answers the probe, and the mount table is a function.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
from typing import Any

import attrs

from telenet.cli.dockerapi import DockerError
from telenet.cli.interfaces import IDocker

#: Run in the daemon container: argv[1] is the request (JSON), stdout the answer (JSON).
PROBE = r"""
import json, os, random, socket, struct, sys
req = json.loads(sys.argv[1])
out = {}
def tcp(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return None
    except OSError as e:
        return str(e) or type(e).__name__
if req.get("grpc"):
    out["grpc"] = tcp("127.0.0.1", req["grpc"])
out["bridge"] = os.path.isdir("/sys/class/net/" + req["bridge"])
def query(server, name):
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    qid = random.randrange(65536)
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        packet += bytes([len(label)]) + label.encode()
    packet += b"\0" + struct.pack(">HH", 1, 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(req.get("timeout", 3))
    try:
        s.sendto(packet, (host, int(port)))
        while True:
            data = s.recv(4096)
            if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid:
                rcode = data[3] & 15
                answers = struct.unpack(">H", data[6:8])[0]
                return {"rcode": rcode, "answers": answers}
    except OSError as e:
        return {"error": str(e) or type(e).__name__}
    finally:
        s.close()
out["dns"] = {s + " " + n: query(s, n) for s, n in req.get("queries", [])}
agents = {}
for agent in req.get("agents", []):
    host, _, port = agent.rpartition(":")
    agents[agent] = tcp(host.strip("[]"), port)
out["agents"] = agents
print(json.dumps(out))
"""

#: DNS response codes, as the user reads them.
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


@attrs.frozen
class ProbeRequest:
    grpc_port: int | None
    #: (server ``ip:port``, name): each answered as ``dns["SERVER NAME"]``.
    queries: tuple[tuple[str, str], ...] = ()
    agents: tuple[str, ...] = ()
    bridge: str = "br-daemon"
    timeout: float = 3.0


class ProbeError(Exception):
    """The probe could not run in the daemon container (its message says why)."""


def daemon_probe(docker: IDocker, container: str, req: ProbeRequest) -> dict[str, Any]:
    """The probe's answer from the daemon container; ProbeError when it cannot run."""
    request = {
        "grpc": req.grpc_port,
        "queries": [list(q) for q in req.queries],
        "agents": list(req.agents),
        "bridge": req.bridge,
        "timeout": req.timeout,
    }
    try:
        code, out, err = docker.exec_in(container, ["python3", "-c", PROBE, json.dumps(request)])
    except DockerError as e:
        raise ProbeError(str(e)) from None
    if code != 0:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit code {code}"]
        raise ProbeError(lines[-1])
    try:
        answer = json.loads(out)
    except ValueError:
        raise ProbeError("the probe's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ProbeError("the probe's answer is not an object")
    return answer


def server_address(text: str) -> str:
    """A DNS server as ``ip:port``/``[ip]:port``, port 53 when ``text`` gives none."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    return f"{ip}:53" if ip.version == 4 else f"[{ip}]:53"


def dns_problem(answer: Any) -> str | None:
    """None when the server answered (any name, found or not), else why not."""
    if not isinstance(answer, dict):
        return "no answer"
    if "error" in answer:
        return f"no answer ({answer['error']})"
    rcode = answer.get("rcode")
    if rcode in (0, 3):
        return None
    return f"answered {RCODES.get(rcode, rcode) if isinstance(rcode, int) else rcode}"


def telemount_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The mount points of telemount's FUSE mounts (file system type ``fuse.telemount``)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5:
            continue
        fstype = tail.split(" ", 1)[0]
        if fstype == "fuse.telemount":
            # Octal escapes (\040 for a space) as the kernel writes them.
            found.append(fields[4].encode().decode("unicode_escape"))
    return found


def stale(path: str) -> bool:
    """Whether the FUSE mount at ``path`` lost its helper (ENOTCONN)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False
