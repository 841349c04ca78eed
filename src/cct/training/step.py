"""A training step's forward and backward passes; on the CPU, a batch split between threads."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..models.layers import own_mask_seeds
from ..runtime import BatchThreads, Runtime


class GradientStep:
    """The loss of a batch and its gradients, added to the parameters' .grad (the caller zeroes them).

    With `parts` > 1 (`Runtime.batch_parts`) the batch is split into that many parts, and each part's forward
    and backward passes run in a thread of their own with its share of the CPU threads (`BatchThreads`); each
    part's loss is weighted by its share of the batch, so .grad sums to the gradient of the batch's mean loss,
    as in one pass, up to rounding. Each part draws its dropout masks from a seed taken from torch's generator
    in order (`own_mask_seeds`), so a run stays reproducible.

    step(x (B, ...), targets (B, ...)) -> (logits (B, classes), the batch's mean loss), both detached; a run of
    steps goes within `stepping()`.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], runtime: Runtime,
                 scaler: torch.amp.GradScaler | None = None, parts: int = 1):
        self.forward, self.loss_fn, self.runtime, self.scaler = forward, loss_fn, runtime, scaler
        self.threads = BatchThreads(parts) if parts > 1 else None

    @contextlib.contextmanager
    def stepping(self):
        """Around a run of steps: with the batch split, the calling thread's own work between them (the
        batch's conversion and augmentation, the optimiser's step) runs on one thread. On two, the OpenMP
        thread that helps it busy-waits after each op for libgomp's spin count (300,000 turns by default,
        ~8 ms on the Zen 5 CPU), on a core the parts need: the benchmark trained the seed model 1.07x as fast
        without it there."""
        if self.threads is None:
            yield
            return
        calling = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(calling)

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.threads is None:
            logits, loss = self.backward(x, targets)
            return logits.detach(), loss.detach()
        parts = min(len(self.threads), len(x))
        xs = x.tensor_split(parts)
        weights = [len(part) / len(x) for part in xs]
        seeds = torch.randint(0, 2**63 - 1, (parts,)).tolist()
        done = self.threads.map(self.part, xs, targets.tensor_split(parts), seeds, weights)
        loss = sum(loss * weight for (_, loss), weight in zip(done, weights))
        return torch.cat([logits for logits, _ in done]), loss

    def part(self, x: torch.Tensor, targets: torch.Tensor, seed: int, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        with own_mask_seeds(seed):
            logits, loss = self.backward(x, targets, weight)
        return logits.detach(), loss.detach()

    def backward(self, x: torch.Tensor, targets: torch.Tensor,
                 weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with self.runtime.autocast():
            logits = self.forward(x)
            loss = self.loss_fn(logits, targets)
        scaled = loss if weight is None else loss * weight
        (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
        return logits, loss
