"""
End to end: names as in the cluster (docs/daemon.md "DNS"), on real dockerd against the embedded
demo cluster, which serves ``echo.default`` and, in its own container, ``echo.other`` (a second
namespace with another body).

- ``telenet curl`` reaches ``echo``, ``echo.default``, ``echo.other`` and ``echo.tel2-search``,
  each the right service;
- a workload of ``telenet docker-run`` gets SRV, PTR (of a cluster address), TXT answers from
  the cluster through the daemon;
- a name the cluster does not have still resolves from the daemon's own resolver: with no
  internet here, the "public" name is one Docker's DNS answers in the daemon container, the
  second service's container on the cluster network as ``<container>.<network>``;
- a name that is both (the env adds the second service's container name as a service of
  namespace ``default``, at the first service's address) resolves as the cluster's;
- a plain ``docker run --network N --dns <daemon>`` container, with no search domain, resolves
  a single label too.
"""

from __future__ import annotations

import subprocess

import pytest

from .conftest import BUSYBOX, run
from .test_e2e_cli import BODY, Env, ensure_curl_image, quit_leaves_nothing
from .test_e2e_cli import env as cli_env

pytestmark = pytest.mark.e2e

#: The module's environment: the CLI tests' demo cluster and config, set up once here.
env = cli_env

OTHER_BODY = "hello from echo.other"


def _in_workload(env: Env, name: str, script: str) -> str:
    """What a busybox workload of ``telenet docker-run`` prints for ``script``."""
    result = env.telenet("--connection", name, "docker-run", "--rm", BUSYBOX, "sh", "-c", script)
    return result.stdout


def test_names_as_in_the_cluster(env: Env) -> None:
    """Short names, a second namespace, tel2-search, record types, public and shadowed names."""
    ensure_curl_image()
    name = f"{env.prefix}-dns"
    env.connect(name)
    status = env.status(name)
    assert status["daemon"]["namespace"] == "default", status
    assert status["daemon"]["dns"]["search"][0] == "default.svc.cluster.local", status
    text = env.telenet("status", "--name", name).stdout
    assert "namespace: default (mapped namespaces: any)" in text, text

    for url, body in (
        ("http://echo/", BODY),
        ("http://echo.default/", BODY),
        ("http://echo.other/", OTHER_BODY),
        ("http://echo.tel2-search/", BODY),
        ("http://echo.other.tel2-search/", OTHER_BODY),
        ("http://echo.other.svc.cluster.local/", OTHER_BODY),
    ):
        result = env.telenet("--connection", name, "curl", "-sS", "--max-time", "10", url)
        assert result.stdout.strip() == body, (url, result)

    cluster_ip, other_ip = env.cluster["ip"], env.cluster["other_ip"]
    out = _in_workload(
        env,
        name,
        "nslookup -type=SRV _http._tcp.echo.default.svc.cluster.local; echo ==; "
        f"nslookup {cluster_ip}; echo ==; "
        "nslookup -type=TXT echo.other.svc.cluster.local; echo ==; "
        f"nslookup {env.cluster['other_container']}.{env.cluster['network']}; echo ==; "
        # busybox asks every search domain and exits 1 for those that are NXDOMAIN.
        f"nslookup -type=A {env.cluster['other_container']} || true",
    )
    srv, ptr, txt, public, both = out.split("==\n")
    assert "0 100 80 echo.default.svc.cluster.local" in srv, out
    assert "name = echo.default.svc.cluster.local" in ptr, out
    assert "demo service echo.other.svc.cluster.local" in txt, out
    # Not the cluster's: Docker's DNS in the daemon answers it.
    assert f"Address: {other_ip}" in public, out
    # Both the cluster's (namespace default) and Docker's: the cluster's address.
    assert f"Address: {cluster_ip}" in both and other_ip not in both, out
    assert "echo-other.default.svc.cluster.local" in both, out

    # A container of the user's own docker run, with no search domain: the daemon completes
    # the single label itself (Docker 20.10's DNS forwards it; 26 answers it empty, see
    # docs/testing.md).
    dns_ip = env.status(name)["daemon"]["dns"]["local_address"].rsplit(":", 1)[0]
    engine = run("docker", "version", "--format", "{{.Server.Version}}").stdout.strip()
    plain = f"{env.prefix}-plain"
    try:
        result = subprocess.run(
            ["docker", "run", "--rm", "--name", plain, "--network", name, "--dns", dns_ip]
            + ([] if engine.startswith("20.") else ["--dns-search", "default.svc.cluster.local"])
            + [BUSYBOX, "nslookup", "-type=A", "echo"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        run("docker", "rm", "-f", plain, check=False)
    assert f"Address: {cluster_ip}" in result.stdout, result
    quit_leaves_nothing(env, name)


def test_namespace_and_mapped_namespaces_of_a_connection(env: Env) -> None:
    """
    ``--namespace other``: ``echo`` is other's. ``echo.default`` still resolves, as in a pod of
    ``other``: ``svc.cluster.local`` is in the search list (mapped namespaces limit what the
    daemon completes itself, tests/test_dns.py).
    """
    ensure_curl_image()
    name = f"{env.prefix}-ns"
    env.connect(name, "--namespace", "other", "--mapped-namespaces", "other")
    status = env.status(name)
    assert status["daemon"]["namespace"] == "other", status
    assert status["daemon"]["mapped_namespaces"] == ["other"], status
    for url, body in (("http://echo/", OTHER_BODY), ("http://echo.default/", BODY)):
        result = env.telenet("--connection", name, "curl", "-sS", "--max-time", "10", url)
        assert result.stdout.strip() == body, (url, result)
    quit_leaves_nothing(env, name)
