"""The full state of a training run, for `cct train --resume`: weights, their moving average (EMA) when the
recipe keeps one, optimiser, schedule, gradient scaler, random-number generators and the position in the epoch. One safetensors file (no pickle), checksummed,
written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import read_tensors, write_tensors

FORMAT = "cct-train-state/1"


def save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule, scaler,
               generator: torch.Generator, ema: torch.nn.Module | None, order: torch.Tensor, progress: dict) -> None:
    """`progress`: JSON values saying where the run is (epoch, step, running sums, rows, best accuracy)."""
    optim = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for index, state in optim["state"].items():
        tensors.update({f"optimizer.{index}.{key}": value for key, value in state.items()})
    tensors.update({"rng.torch": torch.get_rng_state(), "rng.shuffle": generator.get_state(), "order": order})
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    write_tensors(path, tensors, {"format": FORMAT, "progress": progress, "param_groups": optim["param_groups"],
                                  "schedule": schedule.state_dict(), "scaler": scaler.state_dict()})


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule, scaler,
               generator: torch.Generator, ema: torch.nn.Module | None) -> tuple[dict, torch.Tensor]:
    """Restore everything `save_state` wrote; returns (progress, the epoch's sample order)."""
    tensors, header = read_tensors(path, FORMAT)
    device = next(model.parameters()).device
    model.load_state_dict(_prefixed(tensors, "model."))
    if ema is not None:
        ema.load_state_dict(_prefixed(tensors, "ema."))
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": header["param_groups"]})
    for group in optimizer.param_groups:  # moments in their parameter's memory format (channels-last convs)
        for param in group["params"]:
            for key, value in optimizer.state[param].items():
                if value.shape == param.shape:
                    optimizer.state[param][key] = torch.empty_like(param).copy_(value)
    schedule.load_state_dict(header["schedule"])
    scaler.load_state_dict(header["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.shuffle"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return header["progress"], tensors["order"].to(device)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
