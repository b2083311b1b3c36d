r"""Atomic small-file writes: a reader sees the old file or the new one, never a torn one.

A file is written to a temporary name in the same directory, flushed and ``fsync``-ed, then
renamed over the target with :func:`os.replace` (atomic on POSIX and Windows within one file
system). A process killed at any point leaves either no file or a complete one (plus, at worst,
a stray ``*.tmp`` file that is ignored and overwritten later).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["read_json", "write_json_atomic"]


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    r"""Writes ``payload`` as JSON to ``path`` atomically.

    Args:
        path (str or PathLike): target file.
        payload: JSON-serialisable object.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike) -> Any:
    r"""Reads a JSON file written by :func:`write_json_atomic`.

    Args:
        path (str or PathLike): the file.

    Returns:
        the decoded object.
    """
    with open(path) as handle:
        return json.load(handle)
