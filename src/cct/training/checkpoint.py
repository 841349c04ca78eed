"""Checkpoints: weights in safetensors (never pickle), with the model config and a checksum inside the file,
and a readable JSON copy beside it. Both are written to a temporary file and renamed, so a crash never
leaves a half-written checkpoint in place of a good one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from ..errors import CCTError
from ..files import atomic_write, to_json
from ..models import CCT, CCTConfig

FORMAT = "cct-checkpoint/1"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], header: dict) -> dict:
    """Atomically write `tensors` as safetensors, with `header` (JSON values) and their checksum inside;
    returns the header written."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {**header, "sha256": tensors_sha256(tensors)}
    atomic_write(path, save_safetensors(tensors, metadata={k: json.dumps(v) for k, v in header.items()}))
    return header


def read_tensors(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, header) of a file written by `write_tensors`, checking its format `kind` and its checksum."""
    try:
        with safe_open(path, "pt") as f:
            header = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, OSError) as e:
        raise CCTError(f"{path}: not a readable checkpoint (truncated or corrupt: {e})") from e
    if header.get("format") != kind:
        raise CCTError(f"{path}: not a {kind} file")
    if tensors_sha256(tensors) != header.get("sha256"):
        raise CCTError(f"{path}: checksum mismatch, the weights were altered or damaged")
    return tensors, header


def save_checkpoint(path: str | Path, model: CCT, info: dict | None = None) -> Path:
    """Write `path` (.safetensors) and its JSON copy (.json). `info`: anything JSON-serialisable to keep with it
    (epoch, metrics, dataset...)."""
    path = Path(path).with_suffix(".safetensors")
    header = write_tensors(path, model.state_dict(), {"format": FORMAT, "model": model.config.to_dict(),
                                                      "info": info or {}})
    atomic_write(path.with_suffix(".json"), to_json(header) + "\n")
    return path


FOREIGN_FILES = {  # files a checkpoint is mistaken for, and what to do with them
    ".onnx": "an ONNX export runs in onnxruntime",
    ".keras": "`cct convert-keras` imports the keras.io model's weights",
    ".h5": "`cct convert-keras` imports the keras.io model's weights",
}


def resolve_checkpoint(path: str | Path) -> Path:
    """A model-card folder (its model.safetensors), a run folder (its best checkpoint) or either's config.json, a
    .safetensors file or its .json copy -> the .safetensors path."""
    path = Path(path)
    if path.name == "config.json":  # a run's or a card's config: the checkpoint of its folder
        path = path.parent
    if path.is_dir():
        found = [path / name for name in ("model.safetensors", "best.safetensors") if (path / name).is_file()]
        if not found:
            raise CCTError(f"{path}: a folder without a checkpoint (a run folder holds best.safetensors once its "
                           "first epoch has ended, a card folder model.safetensors)")
        path = found[0]
    elif path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise CCTError(f"{path}: no such checkpoint")
    if path.suffix != ".safetensors":
        hint = FOREIGN_FILES.get(path.suffix.lower(), "")
        raise CCTError(f"{path}: not a checkpoint; cct reads .safetensors checkpoints, run folders and card folders"
                       + (f" ({hint})" if hint else ""))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CCT, dict]:
    """Rebuild the model saved at `path`; returns (model in eval mode, header with "model" and "info").
    A truncated, altered or mismatched file is a CCTError naming it."""
    path = resolve_checkpoint(path)
    tensors, header = read_tensors(path, FORMAT)
    try:
        config = CCTConfig.from_dict(header.get("model", {}))
    except (CCTError, TypeError, ValueError) as e:
        raise CCTError(f"{path}: not a valid model config ({e})") from e
    try:
        model = CCT(config)
        model.load_state_dict(tensors)
    except (TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CCTError(f"{path}: weights do not match the model config ({first})") from e
    return model.to(map_location).eval(), header
