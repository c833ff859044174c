"""IStateStore: the same contract for the JSON file store and the memory fake."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from telenet.core.interfaces import IStateStore
from telenet.core.state import JSONFileStore
from telenet.testing import MemoryStateStore


@pytest.fixture(params=["file", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], IStateStore]:
    """A factory of stores that share their storage, as a restarted plug-in would."""
    if request.param == "file":
        path = str(tmp_path / "sub" / "state.json")
        return lambda: JSONFileStore(path)
    shared = MemoryStateStore()
    return lambda: shared


def test_provides_interface(make_store: Callable[[], IStateStore]) -> None:
    """Both stores provide IStateStore."""
    assert verifyObject(IStateStore, make_store())


def test_empty_until_saved(make_store: Callable[[], IStateStore]) -> None:
    """A store that never saved loads as {}."""
    assert make_store().load() == {}


def test_save_survives_a_new_store(make_store: Callable[[], IStateStore]) -> None:
    """What one store saved, the next one loads, as saved (and a copy, not shared)."""
    data = {"volumes": {"v": {"used_by": ["a"], "n": 1.5}}}
    make_store().save(data)
    data["volumes"]["v"]["used_by"].append("mutated later")
    assert make_store().load() == {"volumes": {"v": {"used_by": ["a"], "n": 1.5}}}


def test_last_save_wins(make_store: Callable[[], IStateStore]) -> None:
    """Each save replaces the whole document."""
    store = make_store()
    store.save({"a": 1})
    store.save({"b": 2})
    assert make_store().load() == {"b": 2}


def test_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    """A damaged state file is moved aside and the store starts empty rather than failing."""
    path = tmp_path / "state.json"
    path.write_text('{"volumes": ')
    assert JSONFileStore(str(path)).load() == {}
    assert (tmp_path / "state.json.corrupt").read_text() == '{"volumes": '


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path: Path) -> None:
    """Saving writes through a temporary file renamed into place; none is left behind."""
    store = JSONFileStore(str(tmp_path / "state.json"))
    for i in range(5):
        store.save({"i": i})
    assert os.listdir(tmp_path) == ["state.json"]
    assert json.loads((tmp_path / "state.json").read_text()) == {"i": 4}


def test_unserialisable_data_keeps_the_old_state(tmp_path: Path) -> None:
    """A save that cannot be written leaves the previous document intact."""
    store = JSONFileStore(str(tmp_path / "state.json"))
    store.save({"ok": True})
    with pytest.raises(TypeError):
        store.save({"bad": object()})
    assert store.load() == {"ok": True}
    assert os.listdir(tmp_path) == ["state.json"]
