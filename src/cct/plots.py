"""Figures written beside runs and evaluations (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .files import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def plot_training_curves(rows: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation, from the rows of metrics.csv."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [float(r[f"{split}_loss"]) for r in rows], marker=".", label=split)
        acc_ax.plot(epochs, [100 * float(r[f"{split}_acc"]) for r in rows], marker=".", label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_confusion_matrix(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (true class down, predicted across) with the counts written in."""
    n = len(classes)
    rates = (confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = max(5.0, 0.5 * n)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = range(n)
    ax.set_xticks(ticks, classes if n <= 20 else [""] * n, rotation=45, ha="right")
    ax.set_yticks(ticks, classes if n <= 20 else [""] * n)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    _save(fig, path)


def plot_attention(image, heat, grid: tuple[int, int], title: str, path: Path) -> None:
    """The image beside the same image overlaid with `heat` (token weights upsampled to the image)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4.3))
    left.imshow(image, interpolation="nearest")
    left.set_title("input")
    right.imshow(image, interpolation="nearest")
    overlay = right.imshow(heat, cmap="inferno", alpha=0.6)
    fig.colorbar(overlay, ax=right, fraction=0.046, pad=0.04, label="sequence-pooling weight")
    right.set_title(f"pooling weights over {grid[0]}x{grid[1]} tokens")
    for ax in (left, right):
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
