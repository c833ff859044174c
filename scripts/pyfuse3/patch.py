"""
Give pyfuse3 3.5.0 the two open flags telemount needs and pyfuse3 does not pass on.

    python scripts/pyfuse3/patch.py SOURCE_DIR

- ``FileInfo.cache_readdir`` (FOPEN_CACHE_DIR): the kernel keeps a directory's listing in its
  page cache, so a walk of an unchanged tree reads no directory from the helper;
- ``FileInfo.noflush`` (FOPEN_NOFLUSH): closing a file opened for reading sends no FLUSH;
- ``Operations.opendir`` may return a ``FileInfo`` (as ``open`` does) instead of a bare handle.

Both flags are in libfuse since 3.5 and 3.10 (Debian 12 has 3.14). An unpatched pyfuse3 still
works with telemount: the helper looks for ``FileInfo.cache_readdir`` and does without.
Every edit is checked to apply exactly once, so a new pyfuse3 release fails loudly here.
"""

from __future__ import annotations

import sys
from pathlib import Path

EDITS: list[tuple[str, str, str]] = [
    (
        "Include/fuse_common.pxd",
        "        unsigned int nonseekable\n",
        "        unsigned int nonseekable\n        unsigned int cache_readdir\n"
        "        unsigned int noflush\n",
    ),
    (
        "src/pyfuse3/__init__.pyx",
        "    cdef public bint nonseekable\n\n"
        "    def __cinit__(self, fh=0, direct_io=0, keep_cache=1, nonseekable=0):\n",
        "    cdef public bint nonseekable\n    cdef public bint cache_readdir\n"
        "    cdef public bint noflush\n\n"
        "    def __cinit__(self, fh=0, direct_io=0, keep_cache=1, nonseekable=0,\n"
        "                  cache_readdir=0, noflush=0):\n"
        "        self.cache_readdir = cache_readdir\n"
        "        self.noflush = noflush\n",
    ),
    (
        "src/pyfuse3/__init__.pyx",
        "        if self.nonseekable:\n            out.nonseekable = 1\n"
        "        else:\n            out.nonseekable = 0\n",
        "        if self.nonseekable:\n            out.nonseekable = 1\n"
        "        else:\n            out.nonseekable = 0\n\n"
        "        if self.cache_readdir:\n            out.cache_readdir = 1\n"
        "        else:\n            out.cache_readdir = 0\n\n"
        "        if self.noflush:\n            out.noflush = 1\n"
        "        else:\n            out.noflush = 0\n",
    ),
    (
        "src/pyfuse3/handlers.pxi",
        "        c.fi.fh = await operations.opendir(c.ino, ctx)\n"
        "    except FUSEError as e:\n"
        "        ret = fuse_reply_err(c.req, e.errno)\n"
        "    else:\n",
        "        opened = await operations.opendir(c.ino, ctx)\n"
        "    except FUSEError as e:\n"
        "        ret = fuse_reply_err(c.req, e.errno)\n"
        "    else:\n"
        "        if isinstance(opened, FileInfo):\n"
        "            (<FileInfo> opened)._copy_to_fuse(&c.fi)\n"
        "        else:\n"
        "            c.fi.fh = opened\n",
    ),
    (
        "src/pyfuse3/__init__.pyi",
        "    nonseekable: bool\n\n    def __init__(\n",
        "    nonseekable: bool\n    cache_readdir: bool\n    noflush: bool\n\n    def __init__(\n",
    ),
    (
        "src/pyfuse3/__init__.pyi",
        "        nonseekable: bool = ...,\n    ) -> None: ...\n",
        "        nonseekable: bool = ...,\n        cache_readdir: bool = ...,\n"
        "        noflush: bool = ...,\n    ) -> None: ...\n",
    ),
]


def main(source: str) -> None:
    root = Path(source)
    for name, old, new in EDITS:
        path = root / name
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"pyfuse3 patch: {name} does not hold the expected text once")
        path.write_text(text.replace(old, new))


if __name__ == "__main__":
    main(sys.argv[1])
