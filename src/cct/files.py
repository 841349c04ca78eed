"""Writing files so that a crash never leaves a half-written one in place of a good one."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import CCTError


def to_json(value, level: int = 0) -> str:
    """JSON as a person reads it, characters as written: an object a field a line, a list of numbers or names on
    one line (the betas, the class names), a list of lists or objects an item a line (a confusion matrix's rows)."""
    inner = "  " * (level + 1)
    if isinstance(value, dict) and value:
        keys = [key if isinstance(key, str) else json.dumps(key) for key in value]  # as json.dumps writes them
        items = [f"{inner}{json.dumps(key, ensure_ascii=False)}: {to_json(item, level + 1)}"
                 for key, item in zip(keys, value.values())]
    elif isinstance(value, (list, tuple)) and any(isinstance(item, (dict, list, tuple)) for item in value):
        items = [inner + to_json(item, level + 1) for item in value]
    else:
        return json.dumps(value, ensure_ascii=False)
    opening, closing = "{}" if isinstance(value, dict) else "[]"
    return f"{opening}\n" + ",\n".join(items) + f"\n{'  ' * level}{closing}"


def make_folder(folder: Path, new: bool = False) -> None:
    """Make `folder` and the folders above it where missing; one that cannot be made is a CCTError naming it.
    With `new`, a `folder` that exists already is a FileExistsError (creating it is how a caller claims it)."""
    try:
        folder.mkdir(parents=True, exist_ok=not new)
    except OSError as e:
        if new and isinstance(e, FileExistsError):
            raise
        raise CCTError(f"{folder}: cannot create the folder ({e.strerror or e})") from e


def temporary_path(final: Path, suffix: str = ".tmp", folder: bool = False) -> Path:
    """Create a hidden file (or folder) beside `final` to be renamed to it once complete, with the permissions
    the umask gives any new file (tempfile's are private, 0600 or 0700, and a rename keeps them)."""
    path = final.parent / f".{final.name}.{secrets.token_hex(8)}{suffix}"
    if folder:
        os.mkdir(path, 0o777)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename. A path that cannot
    be written (no such folder, a folder in its place, no space left) is a CCTError naming it."""
    path = Path(path)
    tmp = None
    try:
        tmp = temporary_path(path)
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise CCTError(f"{path}: cannot write ({e.strerror or e})") from e
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def lock_run_folder(folder: Path) -> Iterator[None]:
    """Hold `folder`/.lock for this process while in the context: a second process training into the same run
    folder (a `--resume` while the run still goes on) gets a CCTError before it writes anything, instead of both
    overwriting its checkpoints. Locks nothing where fcntl is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".lock", "ab") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CCTError(f"{folder}: another process is training into this run folder; wait for it to end, or "
                           "stop it") from None
        yield
