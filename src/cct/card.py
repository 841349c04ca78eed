"""Model cards from training runs, in the Hugging Face layout: a folder with config.json, model.safetensors and
README.md (mirroring the seed's keras.io card), plus the figures the README shows."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
from dataclasses import asdict
from pathlib import Path

from . import __version__
from .data import load_dataset
from .data.datasets import count_images, recorded_dataset, require_classes
from .errors import CCTError
from .evaluation import Metrics, class_accuracy, evaluate_saved
from .files import make_folder, temporary_path, to_json
from .models import CCT, count_macs, count_parameters
from .plots import plot_architecture, plot_confusion_matrix, plot_training_curves
from .training import OPTION_FIELDS, RECIPES, RunConfig, load_checkpoint
from .training.loop import in_words

FIGURES = {"curves": "training-curves.png", "architecture": "architecture.png", "confusion": "confusion-matrix.png"}
CARD_FILES = {"README.md", "config.json", "model.safetensors", *FIGURES.values()}


def write_card(run: str | Path, out: str | Path, data_dir: str | Path | None = None,
               dataset: str | Path | None = None) -> Path:
    """Evaluate the run's best checkpoint on its dataset's test split (CIFAR found in `data_dir`, by default the
    run's own; a dataset folder at `dataset`, by default where the run found it) and write the card folder `out`
    (replaced as a whole: a failure leaves any previous card untouched). An `out` that holds anything else than a
    card is refused, so no run or other folder is lost."""
    run, out = Path(run), Path(out)
    if (out.is_dir() and not {p.name for p in out.iterdir()} <= CARD_FILES) or (out.exists() and not out.is_dir()):
        raise CCTError(f"{out}: not a card folder, which a card would replace; choose another --out")
    config = RunConfig.from_run(run)
    config.dataset = str(dataset or recorded_dataset(config.dataset, run))
    metrics_path = run / "metrics.csv"
    if not metrics_path.is_file():
        raise CCTError(f"{metrics_path}: no such file (the run has not finished an epoch)")
    with open(metrics_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < config.recipe.epochs:
        raise CCTError(f"{run}: the run stopped after epoch {len(rows)} of {config.recipe.epochs}, and a card describes "
                       f"a finished run: finish it first (`cct train --resume {run}`)")
    model, header = load_checkpoint(run / "best.safetensors")
    data_dir = data_dir or config.data_dir
    trained = count_images(config.dataset, data_dir, "train") - config.recipe.val_size
    (test,) = load_dataset(config.dataset, data_dir, model.config.img_size, model.config.in_chans, splits=("test",))
    require_classes(model.config, test, config.dataset, run)
    result = evaluate_saved(model, header, test)

    make_folder(out.parent)
    staging = temporary_path(out, "", folder=True)
    try:
        shutil.copyfile(run / "best.safetensors", staging / "model.safetensors")
        summary = {"train_images": min(trained, config.recipe.limit_train or trained), "test_images": len(test),
                   "test_top1": result.top1, "test_top5": result.top5,
                   "per_class": dict(zip(test.classes, result.per_class)), "best_epoch": header["info"]["epoch"],
                   "train_seconds": sum(float(r["seconds"]) for r in rows)}
        card_config = {"library_name": "compact-transformers", "library_version": __version__,
                       "model": model.config.to_dict(), "dataset": Path(config.dataset).name,
                       "recipe": config.recipe.to_dict(), "runtime": asdict(config.runtime),
                       "init_from": config.init_from, "results": summary}
        (staging / "config.json").write_text(to_json(card_config) + "\n", encoding="utf-8")
        plot_training_curves(rows, staging / FIGURES["curves"], config.recipe.progressive_resize)
        plot_architecture(model, staging / FIGURES["architecture"])
        plot_confusion_matrix(result.confusion, test.classes, staging / FIGURES["confusion"],
                              f"{model.config.name} on {card_config['dataset']}: top-1 {result.top1:.2%}")
        (staging / "README.md").write_text(_readme(model, config, summary, rows, result), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _readme(model, config: RunConfig, summary: dict, rows: list[dict], result: Metrics) -> str:
    c, r = model.config, config.recipe
    dataset = Path(config.dataset).name
    precision = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}.get(config.runtime.precision, "float32")
    warmup = (f" after {r.warmup_epochs:g} warmup epoch{'s' * (r.warmup_epochs != 1)} from {r.warmup_lr:g}"
              if r.warmup_epochs else "")
    shaded = "; the epochs of smaller images shaded" if r.progressive_resize else ""
    schedule = (f"cosine to {r.min_lr:g}" if r.schedule == "cosine" else "constant" if warmup else "0.0") + warmup
    augment = [name for name, on in [(f"random crop with {r.crop_padding} px padding", r.crop_padding),
                                     (f"RandomResizedCrop scale {r.resized_crop_scale}", r.resized_crop_scale),
                                     ("horizontal flip", r.hflip), ("AutoAugment (CIFAR-10 policy)", r.auto_augment),
                                     (f"RandAugment {r.rand_augment} (ops, magnitude, std)", r.rand_augment),
                                     (f"random erasing p={r.random_erasing}", r.random_erasing),
                                     (f"MixUp alpha {r.mixup_alpha}", r.mixup_alpha),
                                     (f"CutMix alpha {r.cutmix_alpha}", r.cutmix_alpha)] if on]
    notes = [f"Augmentation during training: {', '.join(augment) or 'none'}",
             f"label smoothing {r.label_smoothing}"]
    if r.progressive_resize:
        stages = ", then ".join(f"{size}x{size} for {n} epoch{'s' * (n > 1)}" for size, n in r.progressive_resize)
        notes.append(f"progressive resizing: the first epochs trained on images resized to {stages}")
    if r.ema_decay:
        notes.append(f"the saved weights are an exponential moving average of the trained ones (decay {r.ema_decay})")
    if r.tta_flip:
        notes.append("at test time the logits of the image and of its mirror image are averaged")
    per_class = "\n".join(f"| {name} | {class_accuracy(acc)} |" for name, acc in summary["per_class"].items())
    took = in_words(summary["train_seconds"])
    keras = c.style == "keras"
    colour = "grayscale" if c.in_chans == 1 else "RGB"
    started = f", starting from the weights of `{config.init_from}`" if config.init_from else ""
    scope = f" from the weights of {config.init_from}" if config.init_from else " only"
    command = train_command(config)
    kind, origin, reads, pools = _architecture(model)
    front_matter = f"""---
library_name: compact-transformers
tags:
- image-classification
- {kind.split(" (")[0].lower().replace(" ", "-")}
datasets:
- {dataset}
metrics:
- accuracy
---

"""
    return front_matter + _refilled(f"""# {c.name} on {dataset}

A {kind} ({count_parameters(model):,} parameters, {count_macs(model) / 1e6:.1f}M
multiply-accumulates per image) trained with the `{r.name}` recipe of compact-transformers{started}: **test top-1 {summary['test_top1']:.2%},
top-5 {summary['test_top5']:.2%}** on the {summary['test_images']:,} test images.
{"Based on the Compact Convolutional Transformers example on keras.io created by Sayak Paul; the same model, layer for layer." if keras else f"The paper's {origin} (Hassani et al.)."}

## Model description

As discussed in the Vision Transformers (ViT) paper, a Transformer-based architecture for vision typically
requires a larger dataset than usual, as well as a longer pre-training schedule. Unlike CNNs, ViTs do not have
well-informed inductive biases such as convolutions. In *Escaping the Big Data Paradigm with Compact
Transformers*, Hassani et al. combine the two{reads}, {c.num_layers} transformer encoder blocks
({"pre-norm, as in the Keras example" if keras else "the paper's layout"}, {c.num_heads} heads) process them,
and {pools} a linear classifier over {c.num_classes} classes.

## Intended uses & limitations

- Classifying {c.img_size}x{c.img_size} {colour} images into the {c.num_classes} {dataset} classes
  ({", ".join(c.class_names)}); larger images are centre-fitted and resized to {c.img_size}x{c.img_size}.
- A small research and teaching model: trained on {dataset}{scope}, it knows nothing outside these classes and
  every image gets one of them.
- {"; ".join(notes)}.

## Training and evaluation data

{dataset}: {_data_use(r, summary)}, and the {summary['test_images']:,} test images were used once, for the
results below.

## Training procedure

Trained in {took} on {_hardware(config)}, with {f"`{command}`" if command else "the recipe in `config.json`"}.

### Training hyperparameters

The following hyperparameters were used during training:

| name | learning_rate | decay | beta_1 | beta_2 | epsilon | amsgrad | weight_decay | exclude_from_weight_decay | training_precision |
|---|---|---|---|---|---|---|---|---|---|
| AdamW | {r.lr:g} | {schedule} | {r.betas[0]:g} | {r.betas[1]:g} | {r.eps:g} | False | {r.weight_decay:g} | None | {precision} |

Batch size {r.batch_size}, {r.epochs} epoch{'s' * (r.epochs != 1)}. The full recipe is in `config.json` (`recipe`); weight decay is
decoupled and multiplied by the learning rate (PyTorch's AdamW).

## Training metrics

![loss and accuracy per epoch, train and validation, the kept epoch marked; the learning rate at each epoch's end{shaded}]({FIGURES['curves']})

## Model plot

![architecture]({FIGURES['architecture']})

## Results

On the {summary['test_images']:,} {dataset} test images (`cct evaluate`): top-1 **{summary['test_top1']:.2%}**,
top-5 {summary['test_top5']:.2%}, loss {result.loss:.4f}.

| class | accuracy |
|---|---|
{per_class}

![confusion matrix]({FIGURES['confusion']})

## How to use

```python
import cct

model = cct.from_pretrained("path/to/this/folder")   # a CCT in eval mode; input (B, 3, {c.img_size}, {c.img_size}) in [0, 1]
classifier = cct.Classifier(model)
print(classifier.predict("photo.jpg"))
```
""")


def _refilled(markdown: str, width: int = 110) -> str:
    """`markdown` with each paragraph and list item refilled to `width` columns (headings, tables, figures and code
    blocks kept as they are), as the text put into the template has any length."""
    lines, block, fenced = [], [], False
    for line in [*markdown.split("\n"), ""]:
        fenced ^= line.startswith("```")
        verbatim = fenced or line.startswith(("```", "#", "|", "![")) or not line.strip()
        if block and (verbatim or line.startswith("- ")):
            lines += _filled(" ".join(block), width)
            block = []
        if verbatim:
            lines.append(line)
        else:
            block.append(line.strip())
    return "\n".join(lines[:-1])


def _filled(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` columns, never split within a code span (a longer word stands alone), nor
    before a word that would start a Markdown block there ("-", "1.", "#"); a list item's lines after its first
    indented by two spaces."""
    lines = []
    for word in re.findall(r"\S*`[^`]*`\S*|\S+", text):
        if lines and (len(lines[-1]) + 1 + len(word) <= width or re.fullmatch(r"[-+*>=#]+|\d+[.)]", word)):
            lines[-1] += " " + word
        else:
            lines.append(("  " if lines and text.startswith("- ") else "") + word)
    return lines


def train_command(config: RunConfig) -> str | None:
    """The `cct train` command line that trains the run as configured (its runtime aside; a folder dataset by its
    name): the fields of its recipe that differ from the named recipe's as options. None for a recipe of a name
    `cct train` does not know (made in Python)."""
    if config.recipe.name not in RECIPES:
        return None
    named = RECIPES[config.recipe.name].to_dict()
    words = ["cct", "train", "--model", config.model]
    if config.init_from:
        words += ["--init-from", config.init_from]
    if config.dataset != "cifar10":
        words += ["--dataset", Path(config.dataset).name]
    words += ["--recipe", config.recipe.name]
    for field, value in config.recipe.to_dict().items():
        if value != named[field]:
            words += [f"--{field.replace('_', '-')}", str(value)] if field in OPTION_FIELDS else \
                ["--recipe-arg", f"{field}={json.dumps(value)}"]
    for field, value in config.model_args.items():
        words += ["--model-arg", f"{field}={json.dumps(value)}"]
    if config.processes > 1:
        words += ["--nproc", str(config.processes)]
    return shlex.join(words)


def _data_use(r, summary: dict) -> str:
    trained = f"{'the first' if r.val_size or r.limit_train else 'all'} {summary['train_images']:,} training images"
    if not r.val_size:
        return f"{trained} trained the model (the last epoch is kept)"
    return (f"{trained} trained the model, the last {r.val_size:,} chose the best epoch ({summary['best_epoch']} "
            f"of {r.epochs}) by validation accuracy")


def _hardware(config: RunConfig) -> str:
    """Where the run trained: "cpu (2 threads, bf16)", "cpu (2 processes of 1 thread each, bf16)", "cuda:0 (bf16)",
    "cuda (4 processes, bf16)"."""
    runtime, processes = config.runtime, config.processes
    how = [f"{processes} processes"] if processes > 1 else []
    if runtime.torch_device.type == "cpu":
        threads = runtime.threads_in_words(processes)
        how = [f"{how[0]} of {threads}" if how else threads]
    return f"{runtime.device} ({', '.join([*how, runtime.precision])})"


def _architecture(model: CCT) -> tuple[str, str, str, str]:
    """The card's words for what `model` is: its kind, the paper's name for it, how it turns the image into tokens
    and how it pools them ("Compact Convolutional Transformer", "CCT-7/3x1", ...; ViT-Lite and CVT, the paper's
    baselines, read patches)."""
    c = model.config
    patches = model.num_tokens - (c.pooling == "class_token")
    if c.tokenizer == "conv":
        kind, origin = "Compact Convolutional Transformer", f"CCT-{c.num_layers}/{c.kernel_size}x{c.num_convs}"
        reads = f": a small convolutional tokenizer turns the image into {patches} tokens of width {c.embed_dim}"
    else:
        kind, origin = (("Compact Vision Transformer (CVT)", f"CVT-{c.num_layers}/{c.patch_size}")
                        if c.pooling == "sequence" else ("ViT-Lite", f"ViT-Lite-{c.num_layers}/{c.patch_size}"))
        origin += " baseline"
        reads = (f"; this {kind}, one of their baselines, has no convolutional tokenizer: its {c.patch_size}x"
                 f"{c.patch_size} patches, each projected as in ViT, make {patches} tokens of width {c.embed_dim}")
    if c.pooling == "sequence":
        pools = "sequence pooling (an attention-weighted average of the tokens) replaces the class token before"
    else:
        pools = "a class token, prepended to the tokens, gathers them for"
        if c.tokenizer == "conv":
            origin += ", with a class token in place of sequence pooling"
    return kind, origin, reads, pools
