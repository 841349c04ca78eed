"""Figures written beside runs and evaluations (matplotlib, no display needed)."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from .files import atomic_write

# fonts that draw Chinese, Japanese and Korean, for class names in those scripts (matplotlib's own DejaVu Sans
# draws none of them): the installed ones follow it
CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "Droid Sans Fallback", "Microsoft YaHei", "Yu Gothic", "Malgun Gothic",
             "PingFang SC", "Hiragino Sans", "Apple SD Gothic Neo", "Arial Unicode MS")


@functools.cache
def font_families() -> tuple[str, ...]:
    """DejaVu Sans, then the installed `CJK_FONTS`, which draw the glyphs it lacks. When matplotlib's cached font
    list has none of them, the system's fonts are looked through once: the cache does not see fonts installed after
    it was made, such as by the README's test command after the set-up command first drew a figure."""
    manager = font_manager.fontManager
    if not any(font.name in CJK_FONTS for font in manager.ttflist):
        known = {font.fname for font in manager.ttflist}
        for path in sorted(set(font_manager.findSystemFonts()) - known):
            try:
                manager.addfont(path)
            except Exception:  # a font file FreeType cannot read is skipped, as in matplotlib's own scan
                pass
    installed = {font.name for font in manager.ttflist}
    return ("DejaVu Sans", *(name for name in CJK_FONTS if name in installed))


def _save(fig: Figure, path: Path) -> None:
    """Write `fig`, laid out by the layout engine it was made with, if any. Figures are made without pyplot, so no
    backend is chosen or changed (a notebook's stays inline), and get their fonts here, so matplotlib's settings
    are left as they are: text beyond ASCII (class names) is drawn with `font_families()`, the rest with the
    default font (matplotlib logs a warning for each CJK font without the bold weight asked of it)."""
    for text in fig.findobj(Text):
        if not text.get_text().isascii():
            text.set_fontfamily(font_families())
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write(path, buffer.getvalue())


def plot_training_curves(rows: list[dict], path: Path, stages: Sequence[tuple[int, int]] = ()) -> Figure:
    """Loss and accuracy per epoch, train and validation (when the run had a validation set), with the epoch kept
    as the best (the first of the highest validation accuracy) marked, and the learning rate at each epoch's end,
    from the rows of metrics.csv; the epochs of each stage of a recipe's `progressive_resize` ((size, epochs),
    ...) shaded, as the curves change course where the images grow."""
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(14, 4), layout="tight")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    first = 1
    for i, (size, count) in enumerate(stages):
        if first > epochs[-1]:  # a stage still to come
            break
        for ax in (loss_ax, acc_ax, lr_ax):  # the first stage (the smallest images) darkest
            ax.axvspan(first - 0.5, min(first + count - 1, epochs[-1]) + 0.5, color="gray", lw=0,
                       alpha=0.25 * (1 - i / len(stages)), label=f"{size}x{size} images" if ax is loss_ax else None)
        first += count
    validated = all(r.get("val_acc") not in (None, "") for r in rows)
    for split in ("train", "val") if validated else ("train",):
        loss_ax.plot(epochs, [float(r[f"{split}_loss"]) for r in rows], marker=".", label=split)
        acc_ax.plot(epochs, [100 * float(r[f"{split}_acc"]) for r in rows], marker=".", label=split)
    if validated:
        best = max(rows, key=lambda r: float(r["val_acc"]))  # the first of the highest, as training keeps it
        acc_ax.plot(int(best["epoch"]), 100 * float(best["val_acc"]), marker="*", markersize=14, linestyle="none",
                    color="black", label=f"kept: epoch {best['epoch']}")
    lr_ax.plot(epochs, [float(r["lr"]) for r in rows], marker=".", color="tab:green")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    lr_ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate at the epoch's end")
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        ax.set_xlim(0.5, epochs[-1] + 0.5)
        ax.grid(alpha=0.3)
    loss_ax.legend()
    acc_ax.legend()
    _save(fig, path)
    return fig


def plot_confusion_matrix(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (true class down, predicted across) with the counts written in."""
    n = len(classes)
    rates = (confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = max(5.0, 0.5 * min(n, 20))  # beyond 20 classes a cell shrinks instead: no names, no counts
    fig = Figure(figsize=(size + 1, size), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = range(n) if n <= 20 else []
    ax.set_xticks(ticks, classes[:len(ticks)], rotation=45, ha="right")
    ax.set_yticks(ticks, classes[:len(ticks)])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 20:
        fontsize = min(12.0, 14 * size / n)  # 7 points in cells of half an inch, larger in larger cells
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=fontsize,
                        color="white" if rates[i, j] > 0.5 else "black")
    _save(fig, path)


def plot_attention(image, heat, grid: tuple[int, int], title: str, path: Path) -> Figure:
    """The image beside the same image overlaid with `heat` (token weights upsampled to the image), the two
    drawn the same size, and a colorbar. The axes sit at fixed places (fractions of the figure): a layout engine
    took 65 of the 150 ms a figure took, which `cct explain` spends on every image."""
    fig = Figure(figsize=(8, 3.9))
    left, right = fig.add_axes((0.01, 0.03, 0.4, 0.8)), fig.add_axes((0.43, 0.03, 0.4, 0.8))
    colorbar_axes = fig.add_axes((0.86, 0.08, 0.02, 0.7))
    left.imshow(image, interpolation="nearest")
    left.set_title("input")
    right.imshow(image, interpolation="nearest")
    overlay = right.imshow(heat, cmap="inferno", alpha=0.6)
    fig.colorbar(overlay, cax=colorbar_axes, label="sequence-pooling weight")
    right.set_title(f"pooling weights over {grid[0]}x{grid[1]} tokens")
    for ax in (left, right):
        ax.axis("off")
    fig.suptitle(title)
    _save(fig, path)
    return fig


def plot_architecture(model: torch.nn.Module, path: Path) -> Figure:
    """The model as a column of stages, input to logits, each with its output shape and parameter count
    (shapes measured by running one image through it)."""
    c = model.config
    stages = [("tokenizer", model.tokenizer), *((f"encoder block {i + 1}", b) for i, b in enumerate(model.blocks)),
              ("layer norm", model.norm), ("sequence pooling" if model.pool is not None else "class token",
                                            model.pool or torch.nn.Identity()), ("linear head", model.head)]
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
             for name, m in stages]
    with torch.no_grad():
        model.eval()(torch.zeros(1, c.in_chans, c.img_size, c.img_size, device=next(model.parameters()).device))
    for hook in hooks:
        hook.remove()
    if model.pool is None:
        shapes["class token"] = (c.embed_dim,)
    rows = [("input image", f"{c.in_chans}x{c.img_size}x{c.img_size}", "")]
    for name, module in stages:
        detail = type(module).__name__ if name != "class token" else "first token"
        params = sum(p.numel() for p in module.parameters())
        rows.append((f"{name}: {detail}", "x".join(map(str, shapes[name])), f"{params:,} params" if params else ""))
        if name == "tokenizer":
            tokens, width = shapes[name]
            if model.class_token is not None:
                tokens += 1
                rows.append(("+ class token, prepended", f"{tokens}x{width}", f"{model.class_token.numel():,} params"))
            if c.positional_embedding != "none":
                rows.append((f"+ {c.positional_embedding} positional embedding", f"{tokens}x{width}",
                             f"{model.pos_embed.numel():,} params" if c.positional_embedding == "learnable" else ""))
    fig = Figure(figsize=(6, 0.75 * len(rows) + 0.8), layout="tight")
    ax = fig.subplots()
    ax.set(xlim=(0, 1), ylim=(len(rows) - 0.4, -0.9))
    ax.axis("off")
    ax.set_title(f"{c.name} ({c.style} encoder blocks, {c.num_heads} heads)")
    for i, (label, shape, params) in enumerate(rows):
        ax.add_patch(Rectangle((0.05, i - 0.3), 0.9, 0.6, facecolor="#dbe9f6", edgecolor="#2b5d8a"))
        ax.text(0.08, i - 0.05, label, va="center", fontsize=9, weight="bold")
        ax.text(0.08, i + 0.17, f"out {shape}", va="center", fontsize=8)
        ax.text(0.92, i + 0.17, params, va="center", ha="right", fontsize=8)
        if i:
            ax.annotate("", (0.5, i - 0.3), (0.5, i - 0.7), arrowprops={"arrowstyle": "->"})
    _save(fig, path)
    return fig
