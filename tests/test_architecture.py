"""
The house's rules, checked on the code itself (docs/architecture.md has the map):

- no import cycle among telenet's modules (imports inside functions count too);
- each deployable imports only its own package, the shared core and the shared protocol
  packages; nothing but tests imports ``telenet.testing``;
- no module over 800 lines (generated code aside), no class over 400;
- pyproject's package list is the tree's packages.
"""

from __future__ import annotations

import ast
import os
import tomllib
from collections.abc import Iterator

ROOT = os.path.join(os.path.dirname(__file__), "..")
TELENET = os.path.join(ROOT, "telenet")
GENERATED = ("telenet.teleroute.proto",)
MAX_MODULE_LINES = 800
MAX_CLASS_LINES = 400

#: Each wing (a deployable, or what they share) and the wings it may import.
WINGS: dict[str, tuple[str, ...]] = {
    "core": (),
    "teleroute": ("core",),  # the teleroute protocol: both sides
    "sftp": ("core",),  # the SFTP protocol: client and server
    "daemon": ("core", "teleroute"),  # the daemon container
    "netplugin": ("core", "teleroute"),  # twistd teleroute
    "telemount": ("core", "sftp"),  # twistd telemount and its FUSE helpers
    "agent": ("core", "sftp"),  # twistd sftp-agent
    "cli": ("core",),  # telenet
    "democluster": ("core", "sftp", "agent"),  # the demo cluster's container
    "testing": ("*",),  # the fakes may use anything
}


def wing(module: str) -> str:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    return {
        "core": "core",
        "teleroute": "teleroute",
        "sftp": "sftp",
        "daemon": "daemon",
        "network": "daemon",
        "sftpproxy": "daemon",  # the SFTP bridges run in the daemon
        "routeplugin": "netplugin",
        "netplugin": "netplugin",
        "mountplugin": "telemount",
        "volumes": "telemount",
        "fuse": "telemount",
        "agent": "agent",
        "cli": "cli",
        "democluster": "democluster",
        "testing": "testing",
    }.get(head, "core" if module == "telenet" else f"? {module}")


def modules() -> dict[str, str]:
    """Every telenet module (dotted name) and its file."""
    found = {}
    for directory, _, files in os.walk(TELENET):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            found[relative.removesuffix(".__init__")] = path
    return found


def imports(path: str, module: str, known: dict[str, str]) -> Iterator[str]:
    """The telenet modules ``path`` imports, at any depth of its code."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("telenet"):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if not base.startswith("telenet"):
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                yield target if target in known else base


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        module: {target for target in imports(path, module, known) if target != module}
        for module, path in known.items()
        if not module.startswith(GENERATED)
    }


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components: none bigger than one module."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in edges:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


def test_each_deployable_imports_only_what_it_may() -> None:
    """A deployable reaches another's package only through the shared core and protocols."""
    wrong = []
    for module, targets in sorted(graph().items()):
        mine = wing(module)
        assert not mine.startswith("?"), f"{module} belongs to no wing: add it to WINGS"
        allowed = WINGS[mine]
        for target in sorted(targets):
            theirs = wing(target)
            if "*" in allowed or theirs in (mine, *allowed):
                continue
            wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert wrong == []


def test_modules_and_classes_stay_small() -> None:
    """At most 800 lines a module (generated code aside) and 400 a class."""
    too_big = []
    for module, path in sorted(modules().items()):
        if module.startswith(GENERATED):
            continue
        text = open(path).read()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{module}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{module}.{node.name}: {size} lines")
    assert too_big == []


def test_pyproject_lists_every_package() -> None:
    """setuptools installs exactly the packages of the tree (and the twistd dropins)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    tree = {
        os.path.relpath(directory, ROOT).replace(os.sep, ".")
        for directory, _, files in os.walk(TELENET)
        if "__init__.py" in files
    }
    assert listed == tree | {"twisted.plugins"}
