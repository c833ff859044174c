"""
Fault suite, item 6 (security): plug-in sockets, what listens where, confinement of volumes
to the agent's export, and no shell built from user input.

The sftp-agent's own confinement (``..``, absolute host paths, symlinks pointing out, loops) is
tested against the real agent in tests/test_agent.py; here it is checked once more end to end,
through a Docker volume.
"""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from telenet import daemon, mountplugin, routeplugin
from telenet.core import dockerplugin

from .conftest import Agent, Telemount, run
from .test_e2e_telemount import busybox, create_volume

ROOT = Path(__file__).resolve().parent.parent
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash", "dash"}


def _module_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for path in sorted((ROOT / "telenet").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        calls += [(path.name, n.lineno, n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return calls


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


def test_no_shell_is_built_from_input() -> None:
    """No module runs a command string: no shell=True, os.system, os.popen, ``sh -c``."""
    found = []
    for module, line, call in _module_calls():
        name = _name(call.func)
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
            found.append(f"{module}:{line} {name}")
        for kw in call.keywords:
            if kw.arg == "shell" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is False
            ):
                found.append(f"{module}:{line} shell=")
        for arg in call.args:
            if isinstance(arg, ast.List | ast.Tuple) and arg.elts:
                # A shell given a command string (a script file as argv[1] is fine).
                words = [e.value if isinstance(e, ast.Constant) else None for e in arg.elts[:2]]
                if words[0] in SHELLS and words[1:] == ["-c"]:
                    found.append(f"{module}:{line} {words[0]} -c")
    assert found == [], found


def test_default_sockets_are_0660_and_control_is_loopback() -> None:
    """Every default plug-in endpoint is mode 0660; the daemon's control API is on loopback."""
    for listen in (
        mountplugin.Options()["listen"],
        routeplugin.Options()["listen"],
        dockerplugin.plugin_endpoint("x"),
    ):
        assert listen.startswith("unix:") and ":mode=660:" in listen, listen
    for name in ("telemount", "teleroute"):
        config = json.loads((ROOT / "plugins" / name / "config.json").read_text())
        listen = config["entrypoint"][config["entrypoint"].index("--listen") + 1]
        assert ":mode=660:" in listen, (name, listen)
    assert daemon.DEFAULT_CONTROL == "tcp:4038:interface=127.0.0.1"


@pytest.mark.e2e
def test_live_socket_owned_by_root_mode_0660(telemount: Telemount) -> None:
    """The running plug-in's socket is root's, with no permission for others."""
    st = os.stat(telemount.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert st.st_uid == 0
    assert st.st_mode & 0o007 == 0 and st.st_mode & 0o777 <= 0o660, oct(st.st_mode)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "opts",
    [
        ["container=..", "dir=/"],
        ["container=a/../..", "dir=/"],
        ["container=echo", "dir=../../../../etc"],
        ["container=echo", "dir=a/../../other"],
    ],
)
def test_escaping_dir_or_container_is_refused(
    telemount: Telemount, sftp_agent: Agent, opts: list[str]
) -> None:
    """``dir`` and container names that would leave the container's export are refused."""
    args = [
        "docker",
        "volume",
        "create",
        "-d",
        telemount.name,
        "-o",
        "host=127.0.0.1",
        "-o",
        f"port={sftp_agent.port}",
    ]
    for o in opts:
        args += ["-o", o]
    result = run(*args, "tntest-escape", check=False)
    assert result.returncode != 0
    assert "tntest-escape" not in telemount.volumes()


@pytest.mark.e2e
def test_symlink_out_of_the_export_is_not_followed(telemount: Telemount, sftp_agent: Agent) -> None:
    """
    Symlinks in the export to a host directory beside it (absolute or climbing) and ``..``
    past the root show nothing of the host.

    (A link's target is resolved by the reader's kernel, in the container: a link to /etc shows
    the container's own /etc, which is why the secret here lives beside the export.)
    """
    outside = os.path.join(os.path.dirname(sftp_agent.root), "outside")
    os.makedirs(outside)
    with open(os.path.join(outside, "secret"), "w") as f:
        f.write("tntest-host-secret\n")
    exported = os.path.join(sftp_agent.root, "echo", "var", "run", "secrets")
    os.symlink(outside, os.path.join(exported, "hostdir"))
    os.symlink("../../../../../outside/secret", os.path.join(exported, "climb"))
    vol, _ = create_volume(telemount, sftp_agent.port)
    out = busybox(
        "sh",
        "-c",
        "cat /s/hostdir/secret; cat /s/climb; cat /s/../../../../outside/secret",
        volumes=(f"{vol}:/s",),
        check=False,
    )
    assert "tntest-host-secret" not in out.stdout + out.stderr, out
    run("docker", "volume", "rm", vol)
