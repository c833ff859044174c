"""The demo cluster's Docker objects, and its sample export, against MemoryDocker."""

from __future__ import annotations

import os
from typing import Any

import pytest

from telenet.cli.connection import CLIError
from telenet.cli.demo import LABEL_DEMO, DemoCluster, format_cluster
from telenet.democluster import SAMPLE_FILES, write_samples
from telenet.testing import MemoryDocker


def test_up_info_and_down() -> None:
    """up makes a labelled network and container and reports the addresses; down removes them."""
    docker = MemoryDocker()
    docker.logs["p-cluster"] = "starting\nready\n"
    info = DemoCluster(docker, "p", "telenet").up(say=lambda _: None)
    assert info["network"] == info["container"] == "p-cluster"
    assert info["agent"] == f"{info['ip']}:8022" and info["cluster_dns"] == info["ip"]
    container = docker.container("p-cluster")
    assert container is not None
    assert container["Config"]["Labels"] == {LABEL_DEMO: "p"}
    assert container["Config"]["Cmd"][:3] == ["python3", "-m", "telenet.democluster"]
    assert "agent    " in format_cluster(info)
    # A second up finds it running and makes nothing new.
    calls = len(docker.calls)
    assert DemoCluster(docker, "p", "telenet").up(say=lambda _: None) == info
    assert docker.calls[calls:] == []
    DemoCluster(docker, "p", "telenet").down()
    assert docker.container_names() == [] and docker.network_names() == ["bridge"]


def test_down_leaves_what_is_not_the_demos() -> None:
    """A network or container of the same name without the demo's label is not removed."""
    docker = MemoryDocker()
    docker.create_network("p-cluster", "bridge", {}, {}, None, False)
    DemoCluster(docker, "p", "telenet").down()
    assert "p-cluster" in docker.network_names()


def test_cluster_that_does_not_start() -> None:
    """A cluster that exits: its last log line; an image without the module: rebuild it."""
    docker = MemoryDocker()
    docker.logs["p-cluster"] = "/opt/telenet/bin/python3: No module named telenet.democluster"
    original = docker.start_container

    def start_then_exit(container: str) -> None:
        original(container)
        docker.kill(container, 1)

    docker.start_container = start_then_exit  # type: ignore[method-assign]
    with pytest.raises(CLIError, match="predates the demo cluster: rebuild it"):
        DemoCluster(docker, "p", "telenet").up(say=lambda _: None)
    assert docker.container_names() == [] and docker.network_names() == ["bridge"]


def test_sample_export(tmp_path: Any) -> None:
    """The agent's export holds the sample container's service account files."""
    write_samples(str(tmp_path), "echo")
    for relative, text in SAMPLE_FILES.items():
        with open(os.path.join(str(tmp_path), "echo", relative)) as f:
            assert f.read() == text
