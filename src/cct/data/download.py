"""Fetch files from the web and unpack archives: progress bar, md5 check, atomic rename."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import CCTError
from ..files import temporary_path


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, checking its md5. `dest` appears only once complete and verified."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(dest, ".part")
    except OSError as e:
        raise CCTError(f"{dest.parent}: cannot write the download there ({e.strerror or e})") from None
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        got = md5sum(tmp)
        if got != md5:
            raise CCTError(f"download of {url} is corrupt: md5 {got}, expected {md5}")
        os.replace(tmp, dest)
    except OSError as e:
        raise CCTError(f"cannot download {url} to {dest}: {e} (offline? fetch it elsewhere, put it at {dest} "
                       "and run again)") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def extract(archive: Path, md5: str, dest_dir: Path, folder: str) -> Path:
    """Check `archive`'s md5 and unpack it so that `dest_dir/folder` appears atomically."""
    got = md5sum(archive)
    if got != md5:
        raise CCTError(f"{archive}: md5 {got}, expected {md5} (corrupt or not the official archive)")
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract-"))
    try:
        with tarfile.open(archive) as tar:
            # the md5 names the official archive; tarfile's "data" filter guards it too where Python has one
            # (3.10.12, 3.11.4 and later; not Debian 12's 3.11.2)
            tar.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        if not (staging / folder).is_dir():
            raise CCTError(f"{archive}: does not contain the folder {folder}/")
        os.replace(staging / folder, dest_dir / folder)
    except (tarfile.TarError, OSError) as e:
        raise CCTError(f"{archive}: cannot extract: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest_dir / folder
