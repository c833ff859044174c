"""Several compose files merged as Compose v2 (compose-go) merges them."""

from __future__ import annotations

from typing import Any

import pytest

from telenet.cli.compose.merge import merge_documents
from telenet.cli.compose.source import ComposeError, parse_source


def merged(*texts: str) -> dict[str, Any]:
    documents = []
    for i, text in enumerate(texts):
        documents += [d.data for d in parse_source(text, f"f{i}.yml")]
    return merge_documents(documents)


BASE = """
services:
  web:
    image: ghcr.io/telepresenceio/emojivoto-web:0.3.0
    command: ["web", "--port", "8080"]
    environment:
      - WEB_PORT=8080
      - EMOJISVC_HOST=emoji:8080
    ports:
      - "8080:8080"
    volumes:
      - data:/data
      - ./static:/static:ro
    dns: 1.1.1.1
    networks: [front]
    depends_on: [voting]
    labels:
      tier: front
  voting:
    image: ghcr.io/telepresenceio/emojivoto-voting:0.3.0
volumes:
  data:
networks:
  front:
"""


def test_override_file_merges_services_volumes_networks() -> None:
    """Mappings merge, scalars replace, the override's new keys are added."""
    project = merged(
        BASE,
        """
services:
  web:
    image: ghcr.io/telepresenceio/emojivoto-web:0.4.0
    command: ["web", "--debug"]
    environment:
      EMOJISVC_HOST: emoji:9090
      DEBUG: "1"
    ports:
      - "8080:8080"
      - "9090:9090"
    volumes:
      - cache:/data
      - ./extra:/extra
    dns: [8.8.8.8]
    networks:
      back:
        aliases: [api]
    depends_on:
      emoji:
        condition: service_healthy
    labels: [owner=me]
  emoji:
    image: ghcr.io/telepresenceio/emojivoto-emoji:0.3.0
volumes:
  cache:
    driver: local
networks:
  back:
""",
    )
    web = project["services"]["web"]
    assert web["image"].endswith(":0.4.0")
    assert web["command"] == ["web", "--debug"]  # replaced, not appended
    # environment: both as KEY=VALUE, unique by key, the later wins in place.
    assert web["environment"] == ["WEB_PORT=8080", "EMOJISVC_HOST=emoji:9090", "DEBUG=1"]
    assert web["ports"] == ["8080:8080", "9090:9090"]
    # volumes: unique by target, the later entry replaces the earlier one in place.
    assert web["volumes"] == ["cache:/data", "./static:/static:ro", "./extra:/extra"]
    assert web["dns"] == ["1.1.1.1", "8.8.8.8"]
    assert web["networks"] == {"front": None, "back": {"aliases": ["api"]}}
    assert web["depends_on"] == {
        "voting": {"condition": "service_started", "required": True},
        "emoji": {"condition": "service_healthy"},
    }
    assert web["labels"] == ["tier=front", "owner=me"]
    assert set(project["services"]) == {"web", "voting", "emoji"}
    assert project["volumes"] == {"data": None, "cache": {"driver": "local"}}
    assert project["networks"] == {"front": None, "back": None}


def test_reset_and_override() -> None:
    """``!reset`` drops the earlier value; ``!override`` replaces it unmerged."""
    project = merged(
        BASE,
        """
services:
  web:
    ports: !reset []
    volumes: !override
      - data:/srv
    environment: !override
      ONLY: "1"
""",
    )
    web = project["services"]["web"]
    assert "ports" not in web
    assert web["volumes"] == ["data:/srv"]
    assert web["environment"] == {"ONLY": "1"}


def test_x_blocks_merge_like_mappings() -> None:
    """compose-go v2 merges x- mappings too (later keys win, lists are appended)."""
    project = merged(
        "x-telenet:\n  connections: [{name: a}]\n  other: 1\n",
        "x-telenet:\n  connections: [{name: b}]\n",
    )
    assert project["x-telenet"] == {"connections": [{"name": "a"}, {"name": "b"}], "other": 1}


def test_null_keeps_the_earlier_value() -> None:
    assert merged(BASE, "services:\n  web:\n    image:\n")["services"]["web"]["image"].endswith(
        ":0.3.0"
    )


def test_build_string_and_mapping() -> None:
    project = merged(
        "services:\n  app:\n    build: ./app\n",
        "services:\n  app:\n    build:\n      dockerfile: Dockerfile.dev\n",
    )
    assert project["services"]["app"]["build"] == {
        "context": "./app",
        "dockerfile": "Dockerfile.dev",
    }


def test_a_mapping_cannot_be_overridden_by_a_list() -> None:
    with pytest.raises(ComposeError, match="cannot override services.web.deploy"):
        merged(
            "services:\n  web:\n    deploy: {replicas: 2}\n",
            "services:\n  web:\n    deploy: [x]\n",
        )


def test_long_volume_syntax_is_unique_by_target() -> None:
    project = merged(
        "services:\n  db:\n    volumes:\n      - {type: volume, source: a, target: /var/lib}\n",
        "services:\n  db:\n    volumes:\n      - b:/var/lib:ro\n",
    )
    assert project["services"]["db"]["volumes"] == ["b:/var/lib:ro"]


def test_inputs_are_not_changed() -> None:
    """Merging works on copies: an anchor shared by two services is not changed through one."""
    (document,) = parse_source(
        "x-env: &env {A: '1'}\nservices:\n  a: {environment: *env}\n  b: {environment: *env}\n",
        "f.yml",
    )
    before = repr(document.data)
    merge_documents([document.data, {"services": {"a": {"environment": {"B": "2"}}}}])
    assert repr(document.data) == before
