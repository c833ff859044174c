"""
End to end with Telepresence's own Go plug-ins: telenet's daemon and CLI drive them.

``$TELENET_PEERS`` (``.ci/run`` sets it to ``../shared/peers``) holds the teleroute network
plug-in (protocol 0.5.0) and docker-volume-telemount v0.3.2, built from Telepresence's source,
with their managed-plug-in manifests. They are installed as managed plug-ins the way
Telepresence installs them (``docker plugin create`` + ``enable``), named in the config's
``docker.teleroute`` / ``docker.telemount``, and the CLI story runs on them: a docker-run
workload reaches the demo cluster's service by name through the Go teleroute plug-in; an
engagement lists and reads the remote files through the Go telemount plug-in (its sshfs) and
telenet's SFTP bridge, and writes through it to the agent's disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from .conftest import BUSYBOX, require, run
from .test_e2e_cli import HTTP_GET, IMAGE, SECRETS, TELENET, Env, quit_leaves_nothing, uid

pytestmark = pytest.mark.e2e

PEERS = os.environ.get(
    "TELENET_PEERS", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peers")
)
TELEROUTE = "docker-network-teleroute"
TELEMOUNT = "docker-volume-telemount"
#: sshfs, fusermount3 and tini for the Go telemount plug-in, kept between runs (by binary).
ROOTFS_IMAGE = "telenet-peers/telemount-rootfs"


def _checksums() -> dict[str, str]:
    sums: dict[str, str] = {}
    with open(os.path.join(PEERS, "SHA256SUMS")) as f:
        for line in f:
            digest, _, name = line.strip().partition("  ")
            sums[name.lstrip("*")] = digest
    return sums


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _debian_base() -> str:
    for base in ("debian:bookworm-slim", "debian:trixie-slim"):
        if (
            subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode
            == 0
        ):
            return base
    pytest.fail("no Debian base image (run: scripts/dev setup)")


def _manifest(name: str, entrypoint: list[str] | None = None) -> dict[str, object]:
    with open(os.path.join(PEERS, name)) as f:
        manifest: dict[str, object] = json.load(f)
    if entrypoint is not None:
        manifest["entrypoint"] = entrypoint
    return manifest


def _create(
    plugin: str,
    manifest: dict[str, object],
    rootfs_tar: str | None,
    binary: str | None,
    workdir: str,
) -> None:
    """``docker plugin create`` from a directory holding config.json and rootfs/."""
    directory = os.path.join(workdir, plugin.replace("/", "_").replace(":", "_"))
    rootfs = os.path.join(directory, "rootfs")
    os.makedirs(rootfs)
    if rootfs_tar is not None:
        run("tar", "-C", rootfs, "-xf", rootfs_tar)
    else:
        # The Go teleroute plug-in finds its own pid by /proc/*/exe == /bin/<binary>: /bin must
        # be a real directory, and the binary is static.
        for sub in ("bin", "proc", "dev", "sys", "etc", "tmp", "var/log", "run/docker/plugins"):
            os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    if binary is not None:
        target = os.path.join(rootfs, "bin", os.path.basename(binary))
        shutil.copy(binary, target)
        os.chmod(target, 0o755)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(manifest, f)
    run("docker", "plugin", "create", plugin, directory, timeout=300)
    run("docker", "plugin", "enable", plugin, timeout=60)


def _telemount_rootfs(workdir: str, binary: str) -> str:
    """A Debian rootfs with sshfs, fuse3, tini and the Go telemount binary, as a tar."""
    tag = f"{ROOTFS_IMAGE}:{_sha256(binary)[:12]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode:
        context = os.path.join(workdir, "telemount-rootfs")
        os.makedirs(context)
        shutil.copy(binary, os.path.join(context, TELEMOUNT))
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(
                f"FROM {_debian_base()}\n"
                "RUN apt-get update && apt-get install -y --no-install-recommends sshfs "
                "fuse3 tini && rm -rf /var/lib/apt/lists/*\n"
                f"COPY {TELEMOUNT} /usr/bin/{TELEMOUNT}\n"
            )
        run("docker", "build", "-q", "-t", tag, context, timeout=600)
    container = run("docker", "create", tag, "true").stdout.strip()
    tar = os.path.join(workdir, "telemount-rootfs.tar")
    try:
        run("docker", "export", "-o", tar, container, timeout=300)
    finally:
        run("docker", "rm", "-f", container, check=False)
    return tar


class PeersEnv(Env):
    """The CLI's config names the Go plug-ins; the demo cluster is the module's own."""

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        namespace = f"{self.prefix}-go"
        with open(self.config, "w") as f:
            f.write(
                f"docker:\n  daemonImage: {IMAGE}\n"
                f"  teleroute: {{namespace: {namespace}, repository: teleroute, "
                "tag: 0.5.0}\n"
                f"  telemount: {{namespace: {namespace}, repository: telemount, "
                "tag: 0.3.2}\n"
            )
        self.plugins = [f"{namespace}/teleroute:0.5.0", f"{namespace}/telemount:0.3.2"]


@pytest.fixture(scope="module")
def peers() -> Iterator[PeersEnv]:
    require(
        os.path.isdir(PEERS), f"Telepresence's Go plug-ins are missing ({PEERS}; set TELENET_PEERS)"
    )
    for binary, digest in _checksums().items():
        path = os.path.join(PEERS, binary)
        require(os.path.exists(path), f"{path} is missing")
        assert _sha256(path) == digest, f"{path} is not the published build (SHA256SUMS)"
    require(
        subprocess.run(["docker", "info"], capture_output=True).returncode == 0,
        "dockerd does not answer (run: scripts/dev setup)",
    )
    require(os.geteuid() == 0, "the plug-ins need root")
    workdir = tempfile.mkdtemp(prefix="tntest-peers-")
    e = PeersEnv(workdir)
    try:
        teleroute, telemount = e.plugins
        _create(
            teleroute,
            _manifest("teleroute.config.json"),
            None,
            os.path.join(PEERS, TELEROUTE),
            workdir,
        )
        # Upstream's image is Alpine (tini in /sbin); this rootfs is Debian's (/usr/bin).
        manifest = _manifest(
            "telemount.config.json", ["/usr/bin/tini", "--", f"/usr/bin/{TELEMOUNT}"]
        )
        _create(
            telemount,
            manifest,
            _telemount_rootfs(workdir, os.path.join(PEERS, TELEMOUNT)),
            None,
            workdir,
        )
        out = e.telenet("demo-cluster", "up", "--prefix", e.prefix, "--output", "json")
        e.cluster = json.loads(out.stdout)
        yield e
    finally:
        for name in sorted(e.connections):
            e.telenet("quit", "--name", name, check=False)
        e.telenet("demo-cluster", "down", "--prefix", e.prefix, check=False)
        for plugin in e.plugins:
            if e.plugin_exists(plugin):
                run("docker", "plugin", "rm", "-f", plugin, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def test_story_with_telepresences_go_plugins(peers: PeersEnv) -> None:
    """
    connect uses the Go plug-ins (managed, enabled), a docker-run workload reaches the cluster
    service by name through Go teleroute, an engagement reads the remote files through Go
    telemount (read-only), another writes through it and the agent has the file; quit leaves
    nothing.
    """
    e = peers
    name = f"{e.prefix}-go"
    out = e.connect(name).stdout
    assert "Creating plug-in" not in out, out  # the Go plug-ins were used as they are
    status = e.status(name)
    assert [p["name"] for p in status["plugins"]] == e.plugins, status["plugins"]
    assert [p["mode"] for p in status["plugins"]] == ["managed", "managed"]
    network = json.loads(run("docker", "network", "inspect", "-f", "{{json .}}", name).stdout)
    assert network["Driver"] == e.plugins[0]

    result = e.telenet(
        "--connection", name, "docker-run", "--rm", BUSYBOX, "sh", "-c", f"ip route; {HTTP_GET}"
    )
    assert "dev tpd-0" in result.stdout and result.stdout.strip().endswith(
        "hello from echo.default"
    ), result

    sample = e.cluster["sample_container"]
    result = e.telenet(
        "engage",
        "--name",
        name,
        "--agent",
        e.cluster["agent"],
        "--container",
        sample,
        "--remote-mount",
        f"{SECRETS}:ro",
        "--docker-run",
        "--",
        BUSYBOX,
        "sh",
        "-c",
        f"ls {SECRETS}/serviceaccount; cat "
        f"{SECRETS}/serviceaccount/token; touch {SECRETS}/x 2>/dev/null "
        "|| echo read-only",
    )
    words = result.stdout.split()
    assert {"ca.crt", "namespace", "token", "demo-token-123", "read-only"} <= set(words), result

    note = f"written through Go telemount {uid()}"
    e.telenet(
        "engage",
        "--name",
        name,
        "--agent",
        e.cluster["agent"],
        "--container",
        sample,
        "--remote-mount",
        f"{SECRETS}/serviceaccount",
        "--docker-run",
        "--",
        BUSYBOX,
        "sh",
        "-c",
        f"echo '{note}' > {SECRETS}/serviceaccount/note && sync",
    )
    on_agent = run(
        "docker",
        "exec",
        e.cluster["container"],
        "cat",
        f"/exports/{sample}{SECRETS}/serviceaccount/note",
    ).stdout
    assert on_agent.strip() == note
    assert e.volumes() == []
    quit_leaves_nothing(e, name)
    assert os.path.exists(TELENET)
