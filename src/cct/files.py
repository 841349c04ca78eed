"""Writing files so that a crash never leaves a half-written one in place of a good one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import CCTError


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename. A path that cannot
    be written (no such folder, a folder in its place, no space left) is a CCTError naming it."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise CCTError(f"{path}: cannot write ({e.strerror or e})") from e
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
