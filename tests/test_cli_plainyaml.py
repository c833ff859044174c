"""
``telenet.cli.plainyaml``: config.yml's plain subset read without PyYAML. Whatever it reads, it
reads as ``yaml.safe_load`` does; anything else it leaves to PyYAML (``DEFER``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from telenet.cli.plainyaml import DEFER, load

#: Files as people write them: read here, as PyYAML reads them.
PLAIN = [
    "",
    "# nothing but a comment\n\n",
    "docker:\n  daemonImage: telenet-x\n",
    "docker:\n  daemonImage: ghcr.io/tel-net/daemon:1.2.3\n  enableIPv6: true\n",
    "docker:\n  teleroute: {namespace: tntest1}\n  telemount: {namespace: tntest1}\n",
    "docker:\n  teleroute: {}\n  telemount: {registry: ghcr.io, tag: latest}\n",
    "grpc:\n  daemonPort: 8090   # the control API\ncluster:\n  namespace: dev\n",
    "intercept:\n  mountTimeout: 1m30s\n  mountCompletionDelay: 500ms\n  useFtp: off\n",
    "docker:\n    subnet: 10.20.0.0/16\n",
    "docker:\n  subnet:\n",
    "a:\n  b:\n    c: x\n  d: y\ne: ~\nf: null\ng: 0\nh: 42\n",
    "timeouts:\n  agentInstall: 120s\nlogLevels:\n  cli: debug\nkeyed_name-2: /etc/x\n",
]

#: Left to PyYAML: lists, quotes, anchors, numbers other than decimal integers, timestamps,
#: tabs, odd indentation, keys PyYAML resolves, duplicate keys, a scalar document.
DEFERRED = [
    "cluster:\n  mappedNamespaces:\n  - a\n  - b\n",
    "cluster:\n  mappedNamespaces: [a, b]\n",
    "docker:\n  daemonImage: 'quoted'\n",
    'docker:\n  daemonImage: "quoted"\n',
    "a: &x 1\nb: *x\n",
    "a: !!str 1\n",
    "a: |\n  text\n",
    "a: 010\n",
    "a: 1.5\n",
    "a: 1:30\n",
    "a: 2001-12-14\n",
    "a: 0x1F\n",
    "a: 1_000\n",
    "a:\tb\n",
    "a: b\r\n",
    "  a: 1\n",
    "a:\n  b: 1\n c: 2\n",
    "a: 1\n  b: 2\n",
    "yes: 1\n",
    "a: 1\na: 2\n",
    "just a scalar\n",
    "---\na: 1\n",
    "a: b: c\n",
    "a: b c\n",
    "a: x#y\n",
    "a: {b: c:d}\n",
    "a: é\n",
]


def safe_load(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return "PyYAML refuses"


@pytest.mark.parametrize("text", PLAIN)
def test_plain_files_are_read_as_pyyaml_reads_them(text: str) -> None:
    got = load(text)
    assert got is not DEFER
    assert got == safe_load(text)


@pytest.mark.parametrize("text", DEFERRED)
def test_the_rest_is_left_to_pyyaml(text: str) -> None:
    assert load(text) is DEFER


# Each part of a generated line: mostly what the reader reads, sometimes what it must not.
KEYS = (["a", "b-c", "key_1", "y", "n", "NaN", "Yes2"], ["yes", "On", "1a", "a b", "null", "a#"])
SEPARATORS = ([": ", ":", ":  ", ": # c "], [" : ", ":x ", ":\t"])
INDENTS = ([0, 2, 4], [1, 3, 6])
VALUES = (
    [
        "", "1", "0", "10s", "1m30s", "1.5h", "true", "Off", "YES", "y", "~", "null", "Null",
        "ghcr.io/x/y:1.2", "a #c", "{x: 1}", "{x: y, z: on}", "{}", "/etc/x", "10.0.0.0/8",
        "1.2.3.4", "fd00::/64", "a-b_c.d", "x+y@z",
    ],
    [
        "010", "-1", "+1", "1.5", ".5", "1e5", "1_000", "1:30", "0x1F", "0b11", "2001-12-14",
        "1.2.3", "a#b", "{x: 1,}", "{x: a:b}", "[1]", "'q'", "\"q\"", "- a", "a: b", "@x",
        "b c", ".inf", "x:", "&a x", "*a", "!x y", "|", ">", "%x", "`x", "a,b", "a?b", "=",
        "<<", "é",
    ],
)  # fmt: skip


def pick(rng: random.Random, choices: tuple[list[Any], list[Any]]) -> Any:
    return rng.choice(choices[1] if rng.random() < 0.08 else choices[0])


def random_text(rng: random.Random) -> str:
    lines = []
    depth = 0
    for i in range(rng.randint(1, 6)):
        # Mostly a sibling, a child of a key without a value, or back out; sometimes anything.
        indent = rng.choice([0, depth]) if rng.random() < 0.9 else pick(rng, INDENTS)
        value = pick(rng, VALUES)
        key = pick(rng, KEYS)
        key += str(i) if key in KEYS[0] else ""  # distinct, mostly
        line = f"{' ' * indent}{key}{pick(rng, SEPARATORS)}{value}"
        lines.append(line.rstrip(" "))
        depth = indent + 2 if value == "" else indent
        if rng.random() < 0.1:
            lines.append(rng.choice(["", "# comment", "  # indented comment", "---", "\t"]))
    return "\n".join(lines) + rng.choice(["\n", ""])


def test_whatever_it_reads_pyyaml_reads_alike() -> None:
    """Thousands of generated files: each read is PyYAML's, and files PyYAML refuses are
    never read (so PyYAML's error stays the one the user sees)."""
    rng = random.Random(19)
    read = 0
    for _ in range(2500):
        text = random_text(rng)
        got = load(text)
        if got is DEFER:
            continue
        read += 1
        assert got == safe_load(text), text
    assert read > 400
