"""How a model executes: device, numeric precision, memory format, compilation and CPU threads.

These choices change speed, not the model or the recipe; a run records the resolved values in its config.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.utils.mkldnn

from .errors import CCTError
from .models.layers import ConvTokenizer


@dataclass
class Runtime:
    """`precision` "auto" is bf16 autocast where the device computes bf16 natively (CUDA with bf16, CPUs with
    AVX512-BF16 or AMX), else fp32. `threads` None uses one thread per core this process may run on."""

    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    fused_optimizer: bool = True
    threads: int | None = None

    def resolve(self) -> "Runtime":
        """A copy with device, precision and threads made concrete (and the thread count applied)."""
        device = resolve_device(self.device)
        precision = self.precision if self.precision != "auto" else ("bf16" if bf16_native(device) else "fp32")
        if precision == "fp16" and device.type != "cuda":
            raise CCTError("precision fp16 needs a CUDA device; use bf16 or fp32 here")
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's processes on this machine
        threads = self.threads or max(1, len(os.sched_getaffinity(0)) // local_processes)
        if device.type == "cpu":
            torch.set_num_threads(threads)
        return Runtime(str(device), precision, self.channels_last, self.compile, self.fused_optimizer, threads)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def low_precision(self) -> torch.dtype | None:
        """The 16-bit dtype of `precision`, None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass of an fp32 model (the weights and the optimiser stay fp32)."""
        if self.low_precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=self.low_precision)

    def prepare(self, model: torch.nn.Module, frozen: bool = False) -> torch.nn.Module:
        """Move `model` to the device and memory format; returns the module to call (compiled if asked).
        `frozen`: the weights will not change (inference only), so in bf16/fp16 they are cast once and the
        model runs in that dtype without autocast, and compilation may fold them in."""
        model.to(self.torch_device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if frozen and self.low_precision is not None:
            model.to(self.low_precision)
            if self.torch_device.type == "cpu" and not self.compile:
                _blocked_conv_tokenizer(model, self.low_precision)
        if not self.compile:
            return model
        return torch.compile(model, options={"freezing": True} if frozen else None)


class OneDNNBlocked(torch.nn.Module):
    """Runs a stack of convs, max-pools and ReLUs for inference on oneDNN's blocked tensors in `dtype`: the
    layout changes once on the way in and once on the way out, not around every layer.

    (B, C, H, W) -> (B, C', H', W'), dense.
    """

    def __init__(self, layers: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.layers = torch.utils.mkldnn.to_mkldnn(copy.deepcopy(layers), dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.to_mkldnn(self.dtype)).to_dense()


def _blocked_conv_tokenizer(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """CPU inference in 16 bits: a CCT's conv tokenizer runs on oneDNN's blocked layout (the seed model's
    tokenizer in bf16: 1.6x faster), unless one of its layers cannot (an explicit padding does not)."""
    tokenizer = getattr(model, "tokenizer", None)
    if not isinstance(tokenizer, ConvTokenizer):
        return
    dense = tokenizer.stages
    tokenizer.stages = OneDNNBlocked(dense, dtype)
    c = model.config
    try:
        with torch.inference_mode():
            model(torch.zeros(1, c.in_chans, c.img_size, c.img_size))
    except RuntimeError:
        tokenizer.stages = dense


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise CCTError(f"device '{name}' is not usable here ({str(e).splitlines()[0]})") from e
    return device


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False
