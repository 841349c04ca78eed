"""The training loop, top to bottom: data -> model -> optimiser -> epochs (train, validate, checkpoint)
-> restore the best epoch -> one test evaluation."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..data import CIFAR, MixUpCutMix, build_augmentation, load_dataset
from ..data.datasets import require_classes
from ..errors import CCTError, first_few
from ..evaluation import Metrics, evaluate, to_model_input
from ..files import atomic_write, lock_run_folder, make_folder, to_json
from ..models import CCT, CCTConfig, adapted, adapted_config, count_parameters, model_config
from ..pretrained import from_pretrained
from ..plots import plot_training_curves
from ..runtime import Runtime
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import Ranks
from .recipes import Recipe, get_recipe
from .state import load_state, save_state
from .step import GradientStep

CSV_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "seconds"]
# a folder with any of these holds a run that another would overwrite (one with only config.json failed before
# its first epoch ended, and is taken over)
RUN_FILES = ("state.safetensors", "best.safetensors", "last.safetensors")


@dataclass
class RunConfig:
    """One training run: what to train, on what, where, with which recipe and runtime. Saved as config.json."""

    model: str | None  # None with init_from: the model it holds
    dataset: str
    recipe: Recipe  # or a recipe's name, made the Recipe of that name
    data_dir: str = "data"
    out: str | None = None
    runtime: Runtime = field(default_factory=Runtime)
    checkpoint_every: int = 0
    tensorboard: bool = False
    init_from: str | None = None  # the weights it starts from (what `cct.from_pretrained` takes); None: fresh ones
    processes: int = 1  # how many trained it (torchrun's world size)
    model_args: dict = field(default_factory=dict)
    model_config: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("dataset", "data_dir", "out", "init_from"):  # pathlib paths, as given, saved as strings
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.recipe, str):
            self.recipe = get_recipe(self.recipe)
        elif not isinstance(self.recipe, Recipe):
            raise CCTError(f"recipe: expected a Recipe or a recipe's name (see `cct recipes`), got "
                           f"{type(self.recipe).__name__}")

    def to_json(self) -> str:
        return to_json(asdict(self))

    @classmethod
    def from_run(cls, source: str | Path) -> "RunConfig":
        """The config saved in a run folder (or a config.json file as it saves them), to resume that run or train
        anew with it; its `out` is the folder it was read from, wherever the run was made."""
        path = Path(source) if Path(source).suffix == ".json" else Path(source) / "config.json"
        if Path(source).is_file() and path != Path(source):
            raise CCTError(f"{source}: a file, not a run folder or a run's config.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "library_name" in data:  # what `cct card` writes
                raise CCTError("a model card's config, not a run's (the card's README.md gives the `cct train` "
                               "command that trains it)")
            return cls(**{**data, "out": str(path.parent), "recipe": Recipe.from_dict(data["recipe"]),
                          "runtime": Runtime(**data["runtime"])})
        except CCTError as e:  # a field's rule
            raise CCTError(f"{path}: {e}") from None
        except FileNotFoundError:
            raise CCTError(f"{path}: no such file (not a run folder)") from None
        except (ValueError, TypeError, KeyError) as e:
            raise CCTError(f"{path}: not a run config ({e})") from e


def lr_multiplier(recipe: Recipe, steps_per_epoch: int):
    """Step -> factor of the peak lr: linear warmup from warmup_lr, then constant or cosine decay to min_lr."""
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    total = recipe.epochs * steps_per_epoch
    floor, start = recipe.min_lr / recipe.lr, recipe.warmup_lr / recipe.lr

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1 - start) * (step + 1) / warmup
        if recipe.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def epoch_image_size(recipe: Recipe, epoch: int, full: int) -> int:
    """The image size epoch `epoch` (from 1) trains at: a stage of recipe.progressive_resize, else `full`."""
    end = 0
    for size, epochs in recipe.progressive_resize:
        end += epochs
        if epoch <= end:
            return size
    return full


def seconds_left(recipe: Recipe, epoch: int, seconds: float, full: int) -> float:
    """How long the epochs after `epoch` should take at the pace of `epoch` (which took `seconds`), an epoch's
    time taken as proportional to the pixels of its images (`epoch_image_size`)."""
    pixels = [epoch_image_size(recipe, e, full) ** 2 for e in range(epoch, recipe.epochs + 1)]
    return seconds * sum(pixels[1:]) / pixels[0]


def in_words(seconds: float) -> str:
    """A time to go, as a person would round it: at least a second, minutes from 90 s, hours from 90 minutes."""
    if seconds >= 90 * 60:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 90:
        return f"{seconds / 60:.0f} minutes"
    return f"{max(1, round(seconds))} second{'s' * (round(seconds) > 1)}"


def train(run: RunConfig, on_epoch_end: Callable[[int, CCT], None] | None = None,
          resume: bool = False) -> tuple[Path, Metrics | None]:
    """Train as `run` says; returns the run folder and the test metrics of the best epoch (None on the ranks
    other than 0 of a multi-process run, see `distributed.py`).
    `resume`: continue from the run folder's state.safetensors (written at epoch ends and, with
    `checkpoint_every` K, every K steps). `on_epoch_end(epoch, model)` is called after each epoch's
    checkpoint (benchmarks use it)."""
    with ExitStack() as cleanup:  # the run folder's lock, TensorBoard writer and process group, however it ends
        return _train(run, on_epoch_end, resume, cleanup)


def _train(run: RunConfig, on_epoch_end: Callable[[int, CCT], None] | None, resume: bool,
           cleanup: ExitStack) -> tuple[Path, Metrics | None]:
    recipe = run.recipe
    from_data = sorted(set(run.model_args) & _set_by_data(run.dataset))
    if from_data:
        raise CCTError(f"model config {', '.join(from_data)}: set by the dataset, not by --model-arg")
    # an unknown name or a bad field fails before the data is read
    if resume:
        config, source = CCTConfig.from_dict(run.model_config), None  # as the run began, whatever it started from
    else:
        config, source = made_model_config(run)
    for size, _ in recipe.progressive_resize:  # the tokenizer takes each stage's images too
        try:
            CCT(replace(config, img_size=size))
        except CCTError as e:
            raise CCTError(f"recipe field progressive_resize: stage {size}x{size}: {e}") from None
    recipe.require_policies()
    if run.out and not resume:
        _check_new_run_folder(Path(run.out))
    if resume and not (Path(run.out) / "state.safetensors").is_file():
        raise CCTError(f"{run.out}: no training state to resume from (the run stopped before its first epoch ended); "
                       f"start it again with `cct train --config {run.out} --out {run.out}`")
    summary_writer = _summary_writer() if run.tensorboard else None
    # recorded absolute, so that evaluate, card and resume find the data from any working directory
    run.data_dir = str(Path(run.data_dir).resolve())
    if run.dataset not in CIFAR:
        run.dataset = str(Path(run.dataset).resolve())
    runtime = run.runtime = run.runtime.resolve()
    ranks = Ranks.from_env(runtime.torch_device.type)
    cleanup.callback(ranks.close)
    run.processes = ranks.world
    if ranks.world > 1 and runtime.torch_device.type == "cuda":
        runtime.device = f"cuda:{ranks.local_rank}"
        torch.cuda.set_device(runtime.torch_device)
    device = runtime.torch_device
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)  # the same sample order on every rank

    # data: the last `val_size` training images validate (0: none, every epoch is kept as the best); all of it
    # stays in memory as uint8
    train_all, test = load_dataset(run.dataset, run.data_dir, config.img_size, config.in_chans)
    if resume:
        require_classes(config, train_all, run.dataset, run.out)
    if recipe.val_size >= len(train_all):
        raise CCTError(f"val_size {recipe.val_size}: must leave training images (the set has {len(train_all)}; "
                       f"set --val-size, e.g. {len(train_all) // 10} for a tenth, or 0 for none)")
    train_set = train_all.subset(slice(0, len(train_all) - recipe.val_size))
    val_set = train_all.subset(slice(len(train_all) - recipe.val_size, None))
    if recipe.limit_train:
        train_set = train_set.subset(slice(0, recipe.limit_train))
    train_set = train_set.to(device)  # the whole uint8 set on the compute device: batches are index lookups
    if recipe.limit_test:
        test = test.shuffled().subset(slice(0, recipe.limit_test))
    img_size = train_all.images.shape[-1]

    from_data = dict(num_classes=len(train_all.classes), img_size=img_size, class_names=tuple(train_all.classes))
    if source is None:
        model, changed = CCT(replace(config, **from_data)), []
    else:
        model, changed = adapted(source, **{**_model_overrides(run), **from_data})
    run.model_config = model.config.to_dict()
    torch.manual_seed(recipe.seed + ranks.rank)  # the same initial weights, different dropout and augmentation
    forward = ranks.wrap(runtime.prepare(model), device)
    augment = build_augmentation(img_size, recipe.crop_padding, recipe.hflip, recipe.resized_crop_scale,
                                 recipe.auto_augment, recipe.rand_augment, recipe.random_erasing)
    mix = (MixUpCutMix(len(train_all.classes), recipe.mixup_alpha, recipe.cutmix_alpha, recipe.mix_switch_prob)
           if recipe.mixup_alpha or recipe.cutmix_alpha else None)
    # the weights that are validated, saved and tested: the model's own, or their moving average
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)
           if recipe.ema_decay else None)
    evaluated = ema.module if ema else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                  weight_decay=recipe.weight_decay, fused=runtime.fused_optimizer or None)
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.precision == "fp16")
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(recipe, steps_per_epoch))
    gradients = GradientStep(
        forward, lambda logits, targets: F.cross_entropy(logits, targets, label_smoothing=recipe.label_smoothing),
        runtime, scaler, runtime.batch_parts() if ranks.world == 1 else 1)  # DDP: one backward per step

    if not run.out:  # rank 0 names the folder for every rank
        named = Path("runs") / f"{model.config.name}-{Path(run.dataset).name}-{datetime.now():%Y%m%d-%H%M%S}"
        run.out = ranks.from_main(str(_new_run_folder(named)) if ranks.main else None)
    out = Path(run.out)
    if ranks.main:
        make_folder(out)
        cleanup.enter_context(lock_run_folder(out))
        atomic_write(out / "config.json", run.to_json() + "\n")
        print(f"run folder: {out}\n{run.to_json()}")
        print(f"{model.config.name}: {count_parameters(model):,} parameters | train {len(train_set):,} | "
              f"val {len(val_set):,} | test {len(test):,} | {runtime.describe()} | "
              f"{ranks.world} process{'es' * (ranks.world > 1)}")
        if source is not None:
            held = "" if run.init_from == source.config.name else f" ({source.config.name})"
            print(f"starting from the weights of {run.init_from}{held}: {'; '.join(changed) or 'all of them'}")

    board = cleanup.enter_context(summary_writer(str(out / "tensorboard"))) if summary_writer and ranks.main else None
    state_path = out / "state.safetensors"
    progress = {"epoch": 1, "step": 0, "loss_sum": 0.0, "correct": 0, "seconds": 0.0, "rows": [], "best_acc": -1.0}
    order = None
    if resume:
        progress, order = load_state(state_path, model, optimizer, schedule, scaler, generator, ema)
        if ranks.main:
            finished = progress["epoch"] > recipe.epochs
            epochs = f"{recipe.epochs} epoch{'s' * (recipe.epochs != 1)}"
            print(f"the run has finished its {epochs}: testing its best checkpoint again" if finished
                  else f"resuming at epoch {progress['epoch']}, step {progress['step']}")
    rows, best_acc = progress["rows"], progress["best_acc"]

    def save_progress(epoch: int, step: int, seconds: float) -> None:
        save_state(state_path, model, optimizer, schedule, scaler, generator, ema, order,
                   {"epoch": epoch, "step": step, "loss_sum": loss_sum.item(), "correct": correct.item(),
                    "seconds": seconds, "rows": rows, "best_acc": best_acc})

    for epoch in range(progress["epoch"], recipe.epochs + 1):
        model.train()
        size = epoch_image_size(recipe, epoch, img_size)
        first_step = progress["step"] if epoch == progress["epoch"] else 0
        started = time.perf_counter() - (progress["seconds"] if first_step else 0.0)
        if not first_step:
            order = torch.randperm(len(train_set), generator=generator).to(device)
        # summed on the device: no sync per step
        loss_sum = torch.tensor(progress["loss_sum"] if first_step else 0.0, device=device)
        correct = torch.tensor(progress["correct"] if first_step else 0, device=device)
        bar = tqdm(range(first_step, steps_per_epoch), desc=f"epoch {epoch}/{recipe.epochs}", leave=False,
                   dynamic_ncols=True, disable=None if ranks.main else True)  # none in a log file
        with gradients.stepping():
            for step in bar:
                index = ranks.shard(order[step * recipe.batch_size:(step + 1) * recipe.batch_size])
                x = augment(to_model_input(train_set.images[index], device, runtime.channels_last))
                if size != img_size:
                    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                y = targets = train_set.labels[index]
                if mix and (recipe.mix_off_epoch is None or epoch <= recipe.mix_off_epoch):
                    x, targets = mix(x, y)
                optimizer.zero_grad(set_to_none=True)
                logits, loss = gradients(x, targets)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                if ema:
                    ema.update_parameters(model)
                loss_sum += loss * len(y)
                correct += (logits.argmax(1) == y).sum()
                if step % 20 == 19 or step == steps_per_epoch - 1:
                    seen = len(ranks.shard(order[:min((step + 1) * recipe.batch_size, len(train_set))]))
                    _stop_unless_finite(loss_sum.item(), f"epoch {epoch} (step {step + 1})", out)
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
                if (ranks.main and run.checkpoint_every and (step + 1) % run.checkpoint_every == 0
                        and step + 1 < steps_per_epoch):
                    save_progress(epoch, step + 1, time.perf_counter() - started)
        bar.close()
        loss_sum, correct = ranks.sum(loss_sum), ranks.sum(correct)
        if not ranks.main:  # rank 0 validates and writes; the others wait for it
            ranks.barrier()
            if on_epoch_end:
                on_epoch_end(epoch, evaluated)
            continue

        row = {"epoch": epoch, "train_loss": loss_sum.item() / len(train_set),
               "train_acc": correct.item() / len(train_set), "lr": optimizer.param_groups[0]["lr"]}
        validated = ""
        if len(val_set):
            val = evaluate(evaluated, val_set, recipe.eval_batch_size, runtime, recipe.tta_flip)
            _stop_unless_finite(val.loss, f"the validation of epoch {epoch}", out)
            row.update(val_loss=val.loss, val_acc=val.top1, val_top5=val.top5)
            validated = f" | val loss {val.loss:.4f} acc {val.top1:.2%} top-5 {val.top5:.2%}"
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        left = seconds_left(recipe, epoch, row["seconds"], img_size)
        print(f"epoch {epoch:3d}/{recipe.epochs} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}"
              f"{validated} | {row['seconds']:.1f}s" + (f" | ~{in_words(left)} left" if left else ""), flush=True)
        _write_metrics(out / "metrics.csv", rows)
        plot_training_curves(rows, out / "training-curves.png", recipe.progressive_resize)  # to watch a long run
        if board:
            for name, value in row.items():
                if name != "epoch":
                    board.add_scalar(name.replace("_", "/", 1) if "_" in name else name, value, epoch)
            board.flush()
        val_acc = row.get("val_acc")
        info = {"epoch": epoch, "dataset": run.dataset, "val_acc": val_acc, "recipe": recipe.name,
                "tta_flip": recipe.tta_flip}
        save_checkpoint(out / "last.safetensors", evaluated, info)
        if val_acc is None or val_acc > best_acc:
            best_acc = val_acc
            save_checkpoint(out / "best.safetensors", evaluated, info)
        save_progress(epoch + 1, 0, 0.0)
        ranks.barrier()
        if on_epoch_end:
            on_epoch_end(epoch, evaluated)

    if not ranks.main:
        ranks.barrier()  # while rank 0 tests
        return out, None
    model, header = load_checkpoint(out / "best.safetensors", device)
    result = evaluate(model, test, recipe.eval_batch_size, runtime, recipe.tta_flip)
    summary = {"best_epoch": header["info"]["epoch"], "test_top1": result.top1, "test_top5": result.top5,
               "test_images": len(test), "per_class": dict(zip(test.classes, result.per_class)),
               "train_seconds": sum(r["seconds"] for r in rows)}
    atomic_write(out / "test.json", to_json(summary) + "\n")
    if board:
        board.add_scalar("test/top1", result.top1, summary["best_epoch"])
        board.add_scalar("test/top5", result.top5, summary["best_epoch"])
    chosen = f"best epoch {summary['best_epoch']} (val acc {best_acc:.2%})" if len(val_set) else "last epoch"
    print(f"{chosen} | test top-1 {result.top1:.2%} top-5 {result.top5:.2%} on {len(test):,} images")
    ranks.barrier()
    return out, result


def _new_run_folder(base: Path) -> Path:
    """`base`, or else `base`-2, -3, ...: the first of them that did not exist, made. Each is claimed by creating
    it, so that runs started within the same second (a loop of short runs, two processes) get a folder each."""
    for n in itertools.count(1):
        folder = base.with_name(base.name + (f"-{n}" if n > 1 else ""))
        try:
            make_folder(folder, new=True)
            return folder
        except FileExistsError:
            continue


def _check_new_run_folder(out: Path) -> None:
    """A new run goes into a new or empty folder, or one left by a run that failed before its first epoch
    ended (its config.json, lock and TensorBoard folder), so that it overwrites no run and no other file."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CCTError(f"{out}: a file, not a run folder")
    names = {p.name for p in out.iterdir()}
    if names & set(RUN_FILES):
        raise CCTError(f"{out}: already holds a run; continue it with `cct train --resume {out}`, "
                       "or choose another --out")
    others = sorted(names - {"config.json", ".lock", "tensorboard"})
    if "config.json" in names:
        try:
            RunConfig.from_run(out)
        except CCTError:
            others.insert(0, "config.json")
    if others:
        raise CCTError(f"{out}: holds other files than a run's ({first_few(others, 5)}); choose a new or empty --out")


def _set_by_data(dataset: str) -> set[str]:
    """The model config fields a dataset sets: a folder's images are resized to the model's img_size; CIFAR's are
    32 x 32, and the model is built for them."""
    return {"num_classes", "class_names"} | ({"img_size"} if dataset in CIFAR else set())


def made_model_config(run: RunConfig) -> tuple[CCTConfig, CCT | None]:
    """The config of the model a new run of `run` trains, before its dataset sets its fields (`_set_by_data`):
    the registry's `run.model` (or the model `run.init_from` holds), the recipe's regularisation, then
    `run.model_args`; and the model it starts from (None: fresh weights)."""
    if not run.init_from:
        return model_config(run.model, **_model_overrides(run)), None
    source = _starting_model(run)
    return adapted_config(source.config, **_model_overrides(run)), source


def _model_overrides(run: RunConfig) -> dict:
    """The model config fields `run` sets: the recipe's regularisation, then `run.model_args`."""
    return {**run.recipe.model_overrides(), **run.model_args}


def edited_model_config(run: RunConfig) -> dict:
    """The fields of `run.model_config` (a saved run's, perhaps an edited copy) that a new run of it would not
    train, its model being made from `run.model` and `run.model_args` (`made_model_config`); those the dataset,
    the recipe or model_args set aside, and none where it holds another model than `run.model`."""
    made = json.loads(json.dumps(made_model_config(run)[0].to_dict()))
    if run.model_config.get("name") != made["name"]:
        return {}
    aside = _set_by_data(run.dataset) | set(_model_overrides(run))
    return {k: v for k, v in sorted(run.model_config.items()) if k not in aside and made.get(k) != v}


def _starting_model(run: RunConfig) -> CCT:
    """The model `run.init_from` names, which decides the run's model (`run.model` must agree); a path in it
    becomes absolute, so that the run's config finds it from anywhere."""
    source = from_pretrained(run.init_from)
    if run.model and model_config(run.model).name != source.config.name:
        raise CCTError(f"--model {run.model}: {run.init_from} holds a {source.config.name}; leave --model out")
    run.model = source.config.name
    if Path(run.init_from).exists():
        run.init_from = str(Path(run.init_from).resolve())
    return source


def _summary_writer():
    """The writer of TensorBoard event files (from the optional `tensorboard` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CCTError("--tensorboard needs the tensorboard package: "
                       "pip install 'compact-transformers[tensorboard]'") from None
    return SummaryWriter


def _stop_unless_finite(loss: float, where: str, out: Path) -> None:
    if not math.isfinite(loss):
        kept = (f", keeping the last good checkpoints in {out}" if (out / "last.safetensors").is_file() else
                " before the first checkpoint")
        raise CCTError(f"the loss became {loss} in {where}; stopped{kept} (try a lower --lr)")


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())
