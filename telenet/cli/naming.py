# -*- test-case-name: tests.test_cli_connect -*-
"""
Names and labels: how a connection's Docker objects are named (``tp-N``, the default name
from the kubeconfig) and labelled, so that everything is found again with no state file.

Separate so that every part of the CLI (connect, status, quit, the runner) spells them one way.
"""

from __future__ import annotations

import os
from typing import Any

from telenet.core.gocompat import safe_name

LABEL_DAEMON = "telepresence.io/teleroute/daemon"
"""On a teleroute network: the id of its daemon container (Telepresence's label)."""
LABEL_CONNECTION = "telenet.cli.connection"
"""On the daemon container, the network and engagement volumes: the connection's name."""
LABEL_ROLE = "telenet.role"
LABEL_NETWORK_PLUGIN = "telenet.network-plugin"
LABEL_VOLUME_PLUGIN = "telenet.volume-plugin"
LABEL_NAMESPACE = "telenet.namespace"
"""On the daemon container: the connected namespace (its workloads' search domains)."""
LABEL_CLUSTER_DOMAIN = "telenet.cluster-domain"
"""On the daemon container: the cluster domain short names are completed with."""
DEFAULT_NAMESPACE = "default"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

CONTAINER_PREFIX = "tp-"


def kube_context(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(current context, its namespace or ``default``) of the kubeconfig, if there is one."""
    env = os.environ if environ is None else environ
    paths = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if not paths:
        paths = [os.path.join(env.get("HOME") or os.path.expanduser("~"), ".kube", "config")]
    context, namespace = "", "default"
    import yaml  # only here: the quick commands never read a kubeconfig

    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(data, dict):
            continue
        current = data.get("current-context")
        if not isinstance(current, str) or not current:
            continue
        context = current
        for entry in data.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") == current:
                ns = (entry.get("context") or {}).get("namespace")
                if isinstance(ns, str) and ns:
                    namespace = ns
        break
    return context, namespace


def default_connection_name(
    environ: dict[str, str] | None = None, namespace: str | None = None
) -> str:
    """
    Telepresence's default for a containerized daemon: ``<context>-<namespace>-cn`` from the
    kubeconfig; ``in-cluster-<namespace>-cn`` when there is no current context. ``namespace``
    replaces the kubeconfig's (an ``x-tele`` connection's ``namespace``).
    """
    context, configured = kube_context(environ)
    namespace = namespace or configured
    name = f"{context}-{namespace}" if context else f"in-cluster-{namespace}"
    return safe_name(name + "-cn")


def container_name(connection: str) -> str:
    return CONTAINER_PREFIX + connection


def labels_of(obj: dict[str, Any] | None) -> dict[str, str]:
    """The labels of a Docker object: a network's ``Labels`` or a container's ``Config``'s."""
    if not obj:
        return {}
    labels = obj.get("Labels")
    if labels is None:
        labels = (obj.get("Config") or {}).get("Labels")
    return dict(labels or {})
