import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from cct.data.download import extract

SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """The real CIFAR-10 beside the project (../shared/data/cifar10)."""
    if not (SHARED_CIFAR10 / "cifar-10-batches-py" / "batches.meta").is_file():
        pytest.fail(f"the real CIFAR-10 is missing at {SHARED_CIFAR10}")
    return SHARED_CIFAR10


def write_cifar10_archive(path: Path, per_batch: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-python.tar.gz in the official layout (pickled dicts with bytes keys, protocol 2), small.
    Returns all training images (N, 3, 32, 32) and labels, in order."""
    rng = np.random.default_rng(seed)
    files, train_x, train_y = {}, [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        files[name] = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                       b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}
        if name != "test_batch":
            train_x.append(data)
            train_y.extend(labels)
    files["batches.meta"] = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES],
                             b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            payload = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return np.concatenate(train_x).reshape(-1, 3, 32, 32), np.array(train_y)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10_folder(data_dir: Path, per_batch: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """`write_cifar10_archive`'s archive in `data_dir`, extracted there as cct extracts it (cifar-10-batches-py/)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / "cifar-10-python.tar.gz"
    written = write_cifar10_archive(archive, per_batch)
    extract(archive, md5_of(archive), data_dir, "cifar-10-batches-py")
    return written


@pytest.fixture
def umask():
    """Set the process's umask (`umask(0o027)`) for the test, the usual 0o022 until then; restored after it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
