"""Compose files read as Compose reads them: YAML 1.2 scalars, Compose's tags, line marks."""

from __future__ import annotations

from typing import Any

import pytest

from telenet.cli.compose.source import (
    RESET,
    ComposeError,
    Locator,
    Override,
    dump_yaml,
    load_source,
    parse_source,
)


def data(text: str) -> dict[str, Any]:
    (document,) = parse_source(text, "compose.yaml")
    return document.data


def test_yaml_12_scalars_as_compose_reads_them() -> None:
    """
    yes/no/on/off stay strings, 22:22 is not base 60, dates stay strings; true/false, numbers
    (0o and 0x too) and null are what YAML 1.2 says.
    """
    doc = data(
        """
services:
  sshd:
    image: linuxserver/openssh-server
    ports:
      - 22:22
      - 2222:22
      - 8080
    environment:
      PASSWORD_ACCESS: yes
      SUDO: off
      SINCE: 2024-01-01
      RATIO: 1.5
      MODE: 0o755
      MASK: 0x1F
      EMPTY:
    read_only: true
    tty: False
"""
    )
    sshd = doc["services"]["sshd"]
    assert sshd["ports"] == ["22:22", "2222:22", 8080]
    assert sshd["environment"] == {
        "PASSWORD_ACCESS": "yes",
        "SUDO": "off",
        "SINCE": "2024-01-01",
        "RATIO": 1.5,
        "MODE": 0o755,
        "MASK": 31,
        "EMPTY": None,
    }
    assert sshd["read_only"] is True and sshd["tty"] is False


def test_keys_are_their_text() -> None:
    """Compose makes every key a string: 80 and true as keys are '80' and 'true'."""
    doc = data("x-map:\n  80: http\n  true: yes\n")
    assert doc["x-map"] == {"80": "http", "true": "yes"}


def test_anchors_and_merge_keys() -> None:
    """``<<: *base`` merges as in Compose; a key of the service wins over the anchor's."""
    doc = data(
        """
x-base: &base
  image: busybox
  restart: always
services:
  a:
    <<: *base
    restart: "no"
"""
    )
    assert doc["services"]["a"] == {"image": "busybox", "restart": "no"}


def test_reset_and_override_tags_are_kept() -> None:
    """``!reset`` and ``!override`` become values for the merge."""
    doc = data(
        """
services:
  web:
    ports: !reset []
    volumes: !override
      - data:/data
    command: !override echo hi
"""
    )
    web = doc["services"]["web"]
    assert web["ports"] is RESET
    assert web["volumes"] == Override(["data:/data"])
    assert web["command"] == Override("echo hi")


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "services:\n  web:\n    image: a\n    image: b\n",
            "compose.yaml:4: key 'image' is already defined at line 3",
        ),
        ("services: [a\n", "compose.yaml:2: not valid YAML: expected ',' or ']'"),
        (
            "services:\n  web: !secret x\n",
            "compose.yaml:2: not valid YAML: could not determine a constructor for the tag "
            "'!secret'",
        ),
        ("- a\n- b\n", "compose.yaml:1: the top level must be a mapping"),
    ],
)
def test_errors_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ComposeError) as e:
        parse_source(text, "compose.yaml")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_several_documents() -> None:
    """A file of several documents gives each (Compose merges them in order)."""
    docs = parse_source("services: {a: {image: x}}\n---\nservices: {b: {image: y}}\n", "f.yml")
    assert [d.data for d in docs] == [
        {"services": {"a": {"image": "x"}}},
        {"services": {"b": {"image": "y"}}},
    ]


def test_load_source_errors(tmp_path: Any) -> None:
    with pytest.raises(ComposeError, match=r"/none\.yaml: no such file$"):
        load_source(str(tmp_path / "none.yaml"))
    with pytest.raises(ComposeError, match="is a directory"):
        load_source(str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"services: \xff\n")
    with pytest.raises(ComposeError, match="not UTF-8"):
        load_source(str(bad))


def test_locator_finds_the_last_file_that_wrote_a_key() -> None:
    base = parse_source("services:\n  web:\n    image: a\n    network_mode: host\n", "a.yml")
    override = parse_source("services:\n\n  web:\n    image: b\n", "b.yml")
    locator = Locator(tuple(base + override))
    assert str(locator.where("services", "web", "image")) == "b.yml:4"
    assert str(locator.where("services", "web", "network_mode")) == "a.yml:4"
    assert locator.where("services", "db") is None


def test_dumped_yaml_reads_back_the_same() -> None:
    """Strings YAML 1.2 would read as numbers or booleans are quoted; the rest stays plain."""
    document = {
        "octal": "0o17",
        "exponent": "1e5",
        "yes": "yes",
        "port": "22:22",
        "date": "2024-01-01",
        "tilde": "~",
        "number": 17,
        "float": 1.5,
        "flag": True,
        "nothing": None,
        "text": "plain",
    }
    text = dump_yaml(document)
    assert "octal: '0o17'" in text and "exponent: '1e5'" in text and "text: plain" in text
    (again,) = parse_source(text, "rendered.yaml")
    assert again.data == document
