"""How a model executes: device, numeric precision, memory format, compilation and CPU threads.

These choices change speed, not the model or the recipe; a run records the resolved values in its config.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import mmap
import os
import platform
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Literal, Sequence

import torch

from .errors import CCTError
from .models.layers import Attention
from .validation import BOOLEAN, check_fields, instance_of, integer, one_of, optional

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
RETURN_1 = b"\xb8\x01\x00\x00\x00\xc3"  # x86-64 machine code: mov eax, 1; ret


_RUNTIME_RULES = {  # checked whenever a runtime is made
    "device": instance_of(str, "a device name"),
    "precision": one_of("auto", "fp32", "bf16", "fp16"),
    **dict.fromkeys(("channels_last", "compile", "fused_optimizer", "fused_inference", "fold_attention",
                     "keep_freed_memory", "mkl_avx2", "split_batch_threads"), BOOLEAN),
    "threads": optional(integer(1)),
}


@dataclasses.dataclass
class Runtime:
    """`precision` "auto" is bf16 autocast where the device computes bf16 natively (CUDA with bf16, CPUs with
    AVX512-BF16 or AMX), else fp32. `fused_inference`: a model prepared `frozen` on the CPU runs through
    oneDNN Graph (`FusedInference`). `fold_attention`: attention layers whose heads are at least as wide as the
    model (Keras') compute through products of their weights (`Attention.folded`: the same function, 40% fewer
    multiply-adds). `keep_freed_memory`: see `keep_freed_memory()`. `mkl_avx2`: see `mkl_avx2()`.
    `split_batch_threads`: see `batch_parts`. `threads` None uses one thread per core this process may run
    on."""

    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    fused_optimizer: bool = True
    fused_inference: bool = True
    fold_attention: bool = True
    keep_freed_memory: bool = True
    mkl_avx2: bool = True
    split_batch_threads: bool = True
    threads: int | None = None

    def __post_init__(self):
        check_fields(self, _RUNTIME_RULES, "runtime")

    def resolve(self) -> "Runtime":
        """A copy with device, precision and threads made concrete (and the thread count applied)."""
        device = resolve_device(self.device)
        precision = self.precision if self.precision != "auto" else ("bf16" if bf16_native(device) else "fp32")
        if precision == "fp16" and device.type != "cuda":
            raise CCTError("precision fp16 needs a CUDA device; use bf16 or fp32 here")
        threads = self.threads or max(1, available_cpus() // local_processes())
        if device.type == "cpu":
            torch.set_num_threads(threads)
            if self.keep_freed_memory:
                keep_freed_memory()
            if self.mkl_avx2:
                mkl_avx2()
        return dataclasses.replace(self, device=str(device), precision=precision, threads=threads)

    def describe(self) -> str:
        """A resolved runtime in words, for a run's first lines: "cuda:0 bf16", "cpu bf16, 2 threads" ("1 thread
        each" in each of torchrun's processes); CPU threads beyond the cores this machine's processes may run on
        are named, as they slow every op down."""
        if self.torch_device.type != "cpu":
            return f"{self.device} {self.precision}"
        processes, cores = local_processes(), available_cpus()
        total = self.threads * processes
        crowded = f" ({total} on {cores} core{'s' * (cores > 1)}: fewer would be faster)" if total > cores else ""
        return f"cpu {self.precision}, {self.threads_in_words(processes)}{crowded}"

    def threads_in_words(self, processes: int) -> str:
        """The CPU threads of one of `processes` processes: "2 threads", "1 thread each"."""
        return f"{self.threads} thread{'s' * (self.threads != 1)}{' each' * (processes > 1)}"

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def low_precision(self) -> torch.dtype | None:
        """The 16-bit dtype of `precision`, None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def batch_parts(self) -> int:
        """How many parts a training step (`cct.training.GradientStep`) and fused inference (`FusedInference`)
        split a batch into, each in a thread of its own with half the CPU threads (`BatchThreads`): 2 with
        `split_batch_threads` on a CPU with 2 threads or more (eager), else 1. On 2 cores of an AVX512-BF16
        CPU the seed model's training steps ran 1.09x as fast on average (0.94x to 1.36x in eight pairs of
        processes) as with both threads in each op."""
        eager_cpu = self.torch_device.type == "cpu" and not self.compile
        return 2 if self.split_batch_threads and eager_cpu and self.threads >= 2 else 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass of an fp32 model (the weights and the optimiser stay fp32)."""
        if self.low_precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=self.low_precision)

    def prepare(self, model: torch.nn.Module, frozen: bool = False) -> torch.nn.Module:
        """Move `model` to the device and memory format; returns the module to call (compiled if asked).
        `frozen`: the weights will not change (inference only), so in bf16/fp16 they are cast once and the
        model runs in that dtype without autocast, on the CPU through oneDNN Graph if `fused_inference`,
        and compilation may fold the weights in. A compiled model on CUDA replays CUDA graphs: a step's
        outputs are valid until its next call."""
        if "auto" in (self.device, self.precision) or self.threads is None:
            raise CCTError("a Runtime prepares a model once resolved: Runtime(...).resolve() chooses its device, "
                           "precision and threads")
        model.to(self.torch_device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        for attention in (m for m in model.modules() if isinstance(m, Attention)):
            attention.fold = self.fold_attention and attention.fold_saves_work
        if frozen and self.low_precision is not None:
            model.to(self.low_precision)
        if frozen and self.fused_inference and self.torch_device.type == "cpu" and not self.compile:
            return FusedInference(model, self.batch_parts())
        if not self.compile:
            return model
        # on a GPU, CUDA graphs replay each step's hundreds of small kernels at once: a small model trains
        # ~2.5x faster than compiled without them (a CCT at batch 128 is bound by kernel launches there)
        cuda_graphs = self.torch_device.type == "cuda"
        return torch.compile(model, options={"freezing": frozen, "triton.cudagraphs": cuda_graphs})


class FusedInference(torch.nn.Module):
    """A frozen model for CPU inference through oneDNN Graph: its forward pass is traced and frozen by
    TorchScript once per image layout and dtype, and oneDNN fuses the traced graph (conv + max-pool + ReLU,
    linear + bias + GELU, LayerNorm with its scale and shift in fp32), which runs the seed model 1.3x faster
    in bf16 and 1.45x in fp32 than eager. A batch of another size than the traced one may run the same graph
    unfused. A batch of more than `max_batch` images runs in parts; with `parts` > 1 (`Runtime.batch_parts`),
    once its graph is warm, each of that many threads takes a run of them (`BatchThreads`).

    (B, C, H, W) -> the model's output; `config` and the parameters are the model's.
    """

    # larger batches run in parts: the seed model ran 7% faster in 64s or 128s than in 256s (bf16, AVX-512),
    # cct_7_3x1_32 1.35x faster in 64s than in 128s (fp32, AVX2; 8 to 64 were all alike)
    max_batch = 64

    def __init__(self, model: torch.nn.Module, parts: int = 1):
        super().__init__()
        self.model = model.requires_grad_(False)
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.float()  # oneDNN Graph leaves a LayerNorm with bf16 scale and shift to aten, 2x slower
        self.graphs: dict[tuple, torch.nn.Module] = {}  # a traced graph, or the model where oneDNN fails
        self.runs = collections.Counter()  # of each graph
        self.threads = BatchThreads(parts) if parts > 1 else None
        self.eval()  # the model's mode too
        torch.jit.enable_onednn_fusion(True)

    @property
    def config(self):
        return self.model.config

    def train(self, mode: bool = True) -> "FusedInference":
        """Stays in eval mode (it only predicts): a layout first seen later is traced, or runs eager, without
        dropout, whatever mode a caller restores (`predict_logits` restores the one it found)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = -(-len(x) // self.max_batch)
        if self.threads is None or parts < 2 or self.runs[self.key(x)] < self.WARM_RUNS:
            return self.predict(x)
        # each thread takes a run of whole parts
        ends = [self.max_batch * (parts * i // len(self.threads)) for i in range(1, len(self.threads))]
        return torch.cat(self.threads.map(self.predict, x.tensor_split(ends)))

    # TorchScript profiles a graph's first run and optimises it at the second, when oneDNN compiles its
    # partitions for the calling thread's thread count: all threads, before the graph serves the part threads.
    # Its kernels keep that count there (each part's thread runs a team of its own), and ran faster so than
    # graphs compiled for one thread in each part's thread (benchmarks/README.md)
    WARM_RUNS = 2

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        return x.shape[1:], x.stride()[1:], x.dtype

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass of `x`, in parts of at most `max_batch` one after another."""
        if len(x) > self.max_batch:
            return torch.cat([self.predict(part) for part in x.split(self.max_batch)])
        key = self.key(x)
        self.runs[key] += 1
        if key not in self.graphs:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed per key
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's; no successor fuses as well
                example = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype).uniform_()
                self.graphs[key] = torch.jit.freeze(torch.jit.trace(self.model, example, check_trace=False))
        try:
            return self.graphs[key](x)
        except RuntimeError:
            # oneDNN Graph rejects a few graphs when it compiles them (explicit padding, a resampled position
            # table): those shapes run eager, which also reports bad inputs in its own words
            self.graphs[key] = self.model
            return self.model(x)


class BatchThreads:
    """Runs a function over the parts of a batch side by side, each part in a thread of its own with its
    share of this process's CPU threads (`Runtime.batch_parts`). With one thread per part, the parts' eager ops
    run side by side, none waiting at an OpenMP barrier for the other core (`FusedInference`'s compiled
    kernels keep the thread count they were compiled for)."""

    def __init__(self, parts: int):
        total = torch.get_num_threads()
        self.part_threads = [total // parts + (i < total % parts) for i in range(parts)]
        self.pool = ThreadPoolExecutor(parts, thread_name_prefix="cct-part")

    def __len__(self) -> int:
        return len(self.part_threads)

    def map(self, fn: Callable, *parts: Sequence) -> list:
        """[fn(*args) for args in zip(*parts)], at most one call per thread, in order."""
        def run(threads: int, *args):
            torch.set_num_threads(threads)
            return fn(*args)

        calling = torch.get_num_threads()
        try:
            return list(self.pool.map(run, self.part_threads, *parts))
        finally:
            torch.set_num_threads(calling)  # libgomp can hand a worker's thread count to this thread


def local_processes() -> int:
    """The training processes on this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def available_cpus() -> int:
    """The CPU cores this process may run on: its affinity where the OS keeps one (Linux: a container's or
    `taskset`'s share), else every core (macOS and Windows have no `os.sched_getaffinity`)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for reuse. By default it hands large blocks back
    to the OS, and each CPU training step of the seed model then faulted 5,000-12,000 fresh pages in for its
    activations and gradients (~17 ms of system time a step at batch 128; training ran ~5% faster once
    they were gone); jemalloc or tcmalloc, preloaded, do the same. True where it applied (glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def mkl_avx2() -> bool:
    """Let MKL, torch's BLAS on x86 CPUs, run its AVX2 kernels on a CPU with AVX2 and FMA not made by Intel.
    MKL picks its kernels by CPU vendor and gives other CPUs (AMD's) generic ones: on 2 cores of an AMD EPYC
    (Zen 3) they multiplied the seed model's (8192, 256) x (256, 128) in fp32 at 72-79 GFLOP/s against
    116-120 with the AVX2 kernels. This overwrites, in this process's memory, the start of MKL's vendor check
    (`mkl_serv_intel_cpu_true`, exported by torch's library) with `return 1`: what a preloaded library
    defining that function does, the widely used workaround. MKL chooses a routine's kernels at its first call
    in a process, so only routines first called after this take them up.
    True where MKL's check now passes on such a CPU (Linux, x86-64, torch built with MKL)."""
    vendor, flags = cpu_vendor_and_flags()
    if (sys.platform != "linux" or platform.machine() != "x86_64" or vendor in ("", "GenuineIntel")
            or not {"avx2", "fma"} <= flags or not torch.backends.mkl.is_available()):
        return False
    try:
        intel_cpu = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
                                ).mkl_serv_intel_cpu_true
    except (OSError, AttributeError):
        return False
    if intel_cpu() == 0:
        address = ctypes.cast(intel_cpu, ctypes.c_void_p).value
        page = address - address % mmap.PAGESIZE
        libc = ctypes.CDLL(None)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        length = address + len(RETURN_1) - page
        if libc.mprotect(page, length, mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC) != 0:
            return False
        ctypes.memmove(address, RETURN_1, len(RETURN_1))
        libc.mprotect(page, length, mmap.PROT_READ | mmap.PROT_EXEC)
    return intel_cpu() == 1


def cpu_vendor_and_flags() -> tuple[str, set[str]]:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD") and feature flags from /proc/cpuinfo; "" and an
    empty set where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return "", set()
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("vendor_id", ""), set(fields.get("flags", "").split())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CCTError(f"device '{name}': expected auto, cpu, cuda, cuda:N (the Nth GPU), mps or another of torch's "
                       "device types") from None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        reason = str(e).splitlines()[0].split(". ")[0].rstrip(".")  # torch's first sentence; some go on for pages
        raise CCTError(f"device '{name}' is not usable here ({reason})") from e
    return device


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False
