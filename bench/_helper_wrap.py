"""
Run the mount helper (``python -m telenet.fuse.helper``) with instruments, for ``helper_cpu.py``.

    python bench/_helper_wrap.py [--profile FILE] [--count] -- HELPER ARGS

``--count`` counts FUSE operations and SFTP requests by type; the control socket then also
answers ``{"op": "bench-counts"}`` with the counts since the last such request (and resets
them). ``--profile`` writes a cProfile of the whole helper run to FILE at exit.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
from typing import Any

from twisted.conch.ssh import filetransfer as ft

from telenet.fuse.control import MountControl
from telenet.fuse.helper import main as run_helper
from telenet.fuse.operations import SFTPOperations
from telenet.sftp import client as sftpclient

OPS = (
    "lookup forget getattr setattr readlink open read write flush release create opendir "
    "readdir releasedir statfs access"
).split()


def count() -> None:
    counts: collections.Counter[str] = collections.Counter()
    for name in OPS:
        original = getattr(SFTPOperations, name)

        def make(original: Any, name: str) -> Any:
            @functools.wraps(original)
            async def counted(*args: Any, **kwargs: Any) -> Any:
                counts["fuse " + name] += 1
                return await original(*args, **kwargs)

            return counted

        setattr(SFTPOperations, name, make(original, name))
    fetch_ahead = SFTPOperations._fetch_ahead

    def counted_fetch_ahead(self: Any, *args: Any) -> None:
        counts["ahead fetched"] += 1
        fetch_ahead(self, *args)

    SFTPOperations._fetch_ahead = counted_fetch_ahead  # type: ignore[method-assign]
    claim = SFTPOperations._claim

    async def counted_claim(self: Any, *args: Any) -> Any:
        info = await claim(self, *args)
        counts["ahead claimed" if info is not None else "ahead refused"] += 1
        return info

    SFTPOperations._claim = counted_claim  # type: ignore[method-assign]
    request = sftpclient.SFTPClient._request

    def counted_request(self: Any, kind: int, *args: Any, **kwargs: Any) -> Any:
        counts["sftp " + ft.FileTransferBase.packetTypes.get(kind, str(kind))] += 1
        return request(self, kind, *args, **kwargs)

    sftpclient.SFTPClient._request = counted_request  # type: ignore[method-assign]
    import gc
    import time

    started: dict[int, float] = {}

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if phase == "start":
            started[generation] = time.perf_counter()
        else:
            counts[f"gc{generation} runs"] += 1
            ms = (time.perf_counter() - started.pop(generation, time.perf_counter())) * 1e3
            counts[f"gc{generation} ms"] += round(ms)

    gc.callbacks.append(gc_timer)
    answer = MountControl.answer

    class Counts:
        def __init__(self, counted: dict[str, int]) -> None:
            self.counted = counted

        def to_json(self) -> dict[str, Any]:
            return {"ok": True, **self.counted}

    async def counted_answer(self: Any, request: object) -> Any:
        # The control protocol's own answers pass through; this op is the bench's alone.
        if isinstance(request, dict) and request.get("op") == "bench-counts":
            result = dict(sorted(counts.items()))
            counts.clear()
            return Counts(result)
        return await answer(self, request)

    MountControl.answer = counted_answer  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile")
    parser.add_argument("--count", action="store_true")
    parser.add_argument("helper", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    helper = args.helper[1:] if args.helper[:1] == ["--"] else args.helper
    if args.count:
        count()
    if not args.profile:
        return run_helper(helper)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(run_helper, helper)
    finally:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main())
