"""The `cct` command: one subcommand per task (models, recipes, train, evaluate, predict, explain, export,
serve, card, convert-keras)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from . import __version__
from .errors import CCTError
from .files import make_folder, to_json
from .pretrained import DEFAULT_MODEL
from .validation import integer

LAUNCHED = "CCT_LAUNCHED"  # set for the ranks that `cct train --nproc N` starts: one report of an error or interrupt


def _models(args: argparse.Namespace) -> None:
    from .models import count_macs, count_parameters, create_model, list_models, model_config
    from .pretrained import BUNDLED

    wildcards = any(c in args.pattern for c in "*?[")
    found = list_models(args.pattern if wildcards else f"*{args.pattern}*", pretrained=args.pretrained,
                        include_aliases=True)
    canonical = {model_config(name).name for name in found}
    names = [name for name in list_models() if name in canonical]  # in list_models' order
    if not names:
        which = "model with bundled weights" if args.pretrained else "model"
        raise CCTError(f"no {which} matches '{args.pattern}' (`cct models` lists them all)")
    print(f"{'name':<22} {'params':>12} {'MACs':>10}  {'input':>7}  {'classes':>7}  pretrained (test top-1)")
    for name in names:
        model = create_model(name)
        c = model_config(name)
        weights = ", ".join(f"{w.dataset} ({w.top1:.2%})" + (" default" if name == DEFAULT_MODEL else "")
                            for w in BUNDLED if w.model == name)
        print(f"{name:<22} {count_parameters(model):>12,} {count_macs(model) / 1e9:>9.3f}G  "
              f"{c.img_size:>3}x{c.img_size:<3}  {c.num_classes:>7}  {weights}")
    aliases = {alias: model_config(alias).name for alias in set(list_models(include_aliases=True)) - set(list_models())}
    shown = [f"{alias} = {name}" for alias, name in sorted(aliases.items()) if name in names]
    if shown:
        print(f"also named: {', '.join(shown)}")


def _train(args: argparse.Namespace) -> None:
    from .runtime import Runtime, available_cpus, resolve_device
    from .data.datasets import recorded_dataset
    from .training import OPTION_FIELDS, RunConfig, get_recipe
    from .training.loop import edited_model_config
    from .training.distributed import require_gpus

    source = args.resume or args.config  # a run whose whole config is taken
    saved = RunConfig.from_run(source) if source else None
    if saved:
        # a resumed run's data may have moved: --dataset and --data-dir say where it is now
        given = _options_given(args)
        allowed = {"nproc", *(("dataset", "data_dir") if args.resume else ("out",))}
        others = [key for key in given if key not in allowed]
        if others:
            raise CCTError(f"{'--resume' if args.resume else '--config'} takes the whole config of {source}; "
                           f"{', '.join('--' + key.replace('_', '-') for key in others)} cannot go with it"
                           + (" (edit a copy of its config.json to change it)" if args.config else ""))
    launched = "LOCAL_RANK" in os.environ  # a rank that torchrun started
    nproc = args.nproc or (saved.processes if saved and not launched else 1)
    if nproc > 1:  # the same command under torchrun, one process per rank
        if resolve_device(saved.runtime.device if saved else args.device).type == "cuda":
            require_gpus(nproc)
        # each rank sets its own thread count (`Runtime.resolve`); set here, torchrun's banner about it stays away
        threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, available_cpus() // nproc)))}
        return _launch(nproc, _without_nproc(args.argv), threads)
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # this process alone, or one of torchrun's ranks
    if saved and saved.processes != processes and saved.runtime.threads:
        # the run's CPU threads, shared among another number of processes
        threads = max(1, saved.runtime.threads * saved.processes // processes)
        saved = replace(saved, runtime=replace(saved.runtime, threads=threads))
    if args.resume:
        moved = {key: getattr(args, key) for key in ("dataset", "data_dir") if key in given}
        if "dataset" not in moved:
            recorded_dataset(saved.dataset, source)
        return _train_run(replace(saved, **moved), resume=True)
    if args.config:
        edited = edited_model_config(saved)
        if edited:
            raise CCTError(f"{source}: model_config {', '.join(edited)}: not what its model and model_args make, "
                           f"which a new run trains: give the changes as model_args (\"model_args\": "
                           f"{json.dumps({**saved.model_args, **edited})}), or delete model_config to train what "
                           "they make")
        return _train_run(replace(saved, out=args.out, model_config={}))
    overrides = {field: getattr(args, field) for field in OPTION_FIELDS}
    recipe = get_recipe(args.recipe).with_overrides(
        {**{k: v for k, v in overrides.items() if v is not None}, **dict(args.recipe_arg)})
    runtime = Runtime(device=args.device, precision=args.precision, channels_last=args.channels_last,
                      compile=args.compile, fused_optimizer=args.fused_optimizer,
                      fold_attention=args.fold_attention, keep_freed_memory=args.keep_freed_memory,
                      mkl_avx2=args.mkl_avx2, split_batch_threads=args.split_batch_threads, threads=args.threads)
    return _train_run(RunConfig(model=args.model or (None if args.init_from else "cct_keras"), dataset=args.dataset,
                                recipe=recipe, data_dir=args.data_dir, out=args.out, runtime=runtime,
                                checkpoint_every=args.checkpoint_every, tensorboard=args.tensorboard,
                                init_from=args.init_from, model_args=dict(args.model_arg)))


def _train_run(run, resume: bool = False) -> int:
    """Train the RunConfig `run`; interrupted (Ctrl-C) after a training state was saved, say how to continue."""
    from .training import train

    try:
        train(run, resume=resume)
    except KeyboardInterrupt:
        if not (run.out and (Path(run.out) / "state.safetensors").is_file()):
            raise
        if _speaks():
            print(f"cct: interrupted; `cct train --resume {run.out}` continues from the last saved state",
                  file=sys.stderr)
        return 130
    return 0


def _launch(nproc: int, argv: list[str], env: dict[str, str]) -> int:
    """`torchrun --standalone --nproc_per_node NPROC -m cct ARGV`, run in this process. Its ranks hand an error
    to it (`_error`), which prints the error once instead of once per rank with torchrun's report and traceback;
    rank 0 alone says it was interrupted."""
    import logging
    import signal
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    torchrun_log = logging.getLogger("torch.distributed.elastic")  # its warnings as it stops the other ranks
    saved_environ = dict(os.environ)
    os.environ.update(env, **{LAUNCHED: "1"})  # what the ranks inherit
    quiet = logging.NullHandler()
    torchrun_log.addHandler(quiet)
    torchrun_log.propagate = False
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "cct", *argv]))
    except SignalException:
        return 130
    except ChildFailedError as e:
        # the rank that reported an error first; else one that failed unasked, not one that torchrun stopped
        rank, failure = min(e.failures.items(), key=lambda item: (
            "cct_error" not in item[1].error_file_data, item[1].exitcode == -signal.SIGTERM, item[0]))
        if "cct_error" in failure.error_file_data:
            raise CCTError(failure.error_file_data["cct_error"]) from None
        how = f"was stopped by {failure.signal_name()}" if failure.exitcode < 0 else \
            f"exited with status {failure.exitcode}"
        raise CCTError(f"training process {rank} of {nproc} {how}") from None
    finally:
        torchrun_log.removeHandler(quiet)
        torchrun_log.propagate = True
        os.environ.clear()
        os.environ.update(saved_environ)
    return 0


def _speaks() -> bool:
    """Whether this process says it was interrupted: any but the ranks of `cct train --nproc N` other than rank 0
    (their errors go to the launching process, `_error`)."""
    return not os.environ.get(LAUNCHED) or os.environ.get("RANK") == "0"


def _error(message: str) -> None:
    """A one-line error on stderr; a rank of `cct train --nproc N` hands it to the launching process instead (in its
    torchelastic error file), which prints the first one."""
    if os.environ.get(LAUNCHED) and os.environ.get("TORCHELASTIC_ERROR_FILE"):
        Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(
            json.dumps({"message": message, "cct_error": message}))
    else:
        print(f"cct: error: {message}", file=sys.stderr)


def _recipes(args: argparse.Namespace) -> None:
    from .training import RECIPES, get_recipe
    from .training.recipes import PURPOSES

    for recipe in [get_recipe(name) for name in args.names] or RECIPES.values():
        print(f"{recipe.name}: {PURPOSES[recipe.name]}")
        try:
            recipe.require_policies()
        except CCTError as e:
            print(f"  refused here: {e}")
        for key, value in recipe.to_dict().items():
            print(f"  {key:<20} {json.dumps(value)}")  # as --recipe-arg takes it


def _options_given(args: argparse.Namespace) -> list[str]:
    """The `cct train` options of `args` (by dest) that differ from their defaults, but --resume and --config."""
    defaults = vars(build_parser().parse_args(["train"]))  # with `func` and `usage_error`, callables, not options
    return [key for key, default in defaults.items()
            if key not in {"resume", "config"} and not callable(default) and getattr(args, key) != default]


def _without_nproc(argv: list[str]) -> list[str]:
    kept, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--nproc":
            skip_next = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def _model_path(args: argparse.Namespace) -> Path:
    """The checkpoint a command runs: --checkpoint, else the bundled weights of --pretrained (default: the
    bundled default model)."""
    from .pretrained import pretrained_path
    from .training.checkpoint import resolve_checkpoint

    if args.checkpoint:
        return resolve_checkpoint(args.checkpoint)
    return pretrained_path(args.pretrained or DEFAULT_MODEL)


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation import class_accuracy, evaluate_saved
    from .data import load_dataset
    from .data.datasets import labelled_as_model, recorded_dataset
    from .plots import plot_confusion_matrix
    from .training import load_checkpoint

    path = _model_path(args)
    model, header = load_checkpoint(path, args.device)
    recorded = header["info"].get("dataset")
    if not (args.dataset or recorded):
        raise CCTError(f"{path}: the checkpoint does not say its dataset; pass --dataset")
    dataset = args.dataset or recorded_dataset(recorded, path)
    (test,) = load_dataset(dataset, args.data_dir or _run_data_dir(path) or "data", model.config.img_size,
                           model.config.in_chans, splits=("test",))
    test = labelled_as_model(model.config, test, dataset, path)
    named = Path(dataset).resolve().name  # "cifar10", or the folder's name
    out = _output_file(args.out or (path.with_name(f"{path.stem}-{named}-confusion.png") if args.checkpoint
                                    else f"{model.config.name}-{named}-confusion.png"), ".png")
    result = evaluate_saved(model, header, test)
    plot_confusion_matrix(result.confusion, test.classes, out,
                          f"{model.config.name} on {named}: top-1 {result.top1:.2%}")
    flip = bool(header["info"].get("tta_flip"))
    if args.json:
        print(to_json({"model": model.config.name, "dataset": dataset, "images": len(test), "tta_flip": flip,
                       "top1": result.top1, "top5": result.top5, "loss": result.loss,
                       "per_class": dict(zip(test.classes, result.per_class)),
                       "confusion": result.confusion.tolist(), "confusion_png": str(out)}))
        return
    print(f"{model.config.name} on {dataset} ({len(test):,} test images){' (test-time flip)' * flip}: top-1 "
          f"{result.top1:.2%} top-5 {result.top5:.2%} loss {result.loss:.4f}")
    width = max(15, *map(len, test.classes))
    for name, acc in zip(test.classes, result.per_class):
        print(f"  {name:<{width}}  {class_accuracy(acc):>9}")
    print(f"confusion matrix: {out}")


def _run_data_dir(checkpoint: Path) -> str | None:
    """Where the run that wrote `checkpoint` found its data, if the checkpoint is in a run folder."""
    from .training import RunConfig

    try:
        return RunConfig.from_run(checkpoint.parent).data_dir
    except CCTError:
        return None


def _predict(args: argparse.Namespace) -> int:
    """Predicts every readable image; each unreadable one gets its own error line and a non-zero exit."""
    from .inference import Classifier

    classifier = Classifier.from_pretrained(_model_path(args), args.device)
    failures = []
    answered = 0  # printed as it goes; with --json, the items of one JSON list
    for readable in _read_images([image for image, _ in _image_files(args.images, failures)], classifier, failures):
        predictions = classifier.predict(list(readable.values()), args.top_k)
        for path, prediction in zip(readable, predictions):
            if args.json:
                item = to_json({"image": path, "labels": prediction.labels,
                                "probabilities": prediction.probabilities})
                print(("[\n" if not answered else ",\n") + textwrap.indent(item, "  "), end="")
            else:
                print(path)
                for label, probability in zip(prediction.labels, prediction.probabilities):
                    print(f"  {probability:7.2%}  {label}")
            answered += 1
        sys.stdout.flush()
    if args.json:
        print("\n]" if answered else "[]")
    return _report(failures)


def _read_images(paths: list[str], classifier, failures: list[str], chunk: int = 256) -> Iterator[dict]:
    """{path: (C, S, S) uint8 as the classifier's model reads it} of the readable files, `chunk` files at a
    time (decoded on every core), so that a large folder's answers come as they are made; a failure for each
    other."""
    from .data.images import load_images

    c = classifier.model.config
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        readable = {}
        for path, image in zip(part, load_images(part, c.img_size, c.in_chans)):
            if isinstance(image, str):
                failures.append(image)
            else:
                readable[path] = image
        yield readable


def _report(failures: list[str]) -> int:
    """One error line each; the exit status."""
    for failure in failures:
        _error(failure)
    return 1 if failures else 0


def _image_files(arguments: list[str], failures: list[str]) -> list[tuple[str, Path]]:
    """The arguments, each folder replaced by the image files in it and below (`image_files`), each file with its
    path below its folder argument (a file argument: its name); a folder without any adds a failure."""
    from .data.images import IMAGE_SUFFIXES, image_files

    files = []
    for argument in arguments:
        if not Path(argument).is_dir():
            files.append((argument, Path(Path(argument).name)))
            continue
        found = [(str(path), path.relative_to(argument)) for path in image_files(Path(argument))]
        files += found
        if not found:
            failures.append(f"{argument}: a folder without images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _explain(args: argparse.Namespace) -> int:
    """Explains every readable image, as `_predict` predicts; --out is the PNG of one image, or a folder, where
    the images of a folder argument keep their subfolders."""
    from .data.images import IMAGE_SUFFIXES
    from .explain import explain
    from .inference import Classifier

    suffix = Path(args.out).suffix.lower() if args.out else ""
    if suffix in IMAGE_SUFFIXES - {".png"} and not Path(args.out).is_dir():
        raise CCTError(f"--out {args.out}: explain writes PNG images; give a name ending in .png for one image, "
                       "or a folder")
    failures = []
    images = _image_files(args.images, failures)
    one_file = suffix == ".png"
    if one_file and (len(args.images) > 1 or Path(args.images[0]).is_dir()):
        raise CCTError(f"--out {args.out}: one .png for several images; give a folder")
    outs = {}  # an image given twice (itself and in its folder) is explained once
    for image, name in images:
        outs.setdefault(image, Path(args.out) if one_file else Path(args.out or "") / name.with_suffix(".explain.png"))
    explained = {}
    for image, out in outs.items():
        if explained.setdefault(out, image) != image:
            raise CCTError(f"{explained[out]} and {image} would both be explained in {out}; explain them apart")
    classifier = Classifier.from_pretrained(_model_path(args), args.device)
    for readable in _read_images(list(outs), classifier, failures):
        for image, seen in readable.items():
            print(f"{image} -> {explain(classifier, seen, _output_file(outs[image], '.png'))}")
    return _report(failures)


def _output_file(path: str | Path, suffix: str) -> Path:
    """`path`, its folder made if missing, so that an output file can go to a new folder. Its name must end in
    `suffix`, the kind of file written, so that no checkpoint or other file is overwritten by mistake."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise CCTError(f"{path}: this writes a {suffix} file; give --out a name ending in {suffix}")
    make_folder(path.parent)
    return path


def _export(args: argparse.Namespace) -> None:
    from .export import export_onnx
    from .training import load_checkpoint

    path = _model_path(args)
    model, _ = load_checkpoint(path)
    out = export_onnx(model, _output_file(args.out or (path.with_suffix(".onnx") if args.checkpoint
                                                       else f"{model.config.name}.onnx"), ".onnx"))
    print(f"{path} -> {out}")


def _serve(args: argparse.Namespace) -> None:
    from .inference import Classifier
    from .serve import ServeLimits, serve

    limits = ServeLimits(max_upload_bytes=args.max_upload_mb * 2**20, max_concurrent=args.max_concurrent)
    serve(Classifier.from_pretrained(_model_path(args), args.device), args.host, args.port, limits)


def _card(args: argparse.Namespace) -> None:
    from .card import write_card

    out = write_card(args.run, args.out or Path(args.run) / "card", args.data_dir, args.dataset)
    print(f"{args.run} -> {out}")


def _convert_keras(args: argparse.Namespace) -> None:
    from .convert import convert_keras
    from .training import save_checkpoint

    out = _output_file(args.out, ".safetensors")
    model = convert_keras(args.weights)
    out = save_checkpoint(out, model, {"dataset": "cifar10", "source": str(args.weights)})
    print(f"{args.weights} -> {out}")


def key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def integer_in(low: int, high: int | None = None):
    """An argparse type: an integer from `low` to `high` (inclusive; None: no upper bound)."""
    rule = integer(low, high)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if not rule(value):
            raise argparse.ArgumentTypeError(f"expected {rule.expects}, got {text!r}")
        return value
    return parse


def _add_model_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", "-c", help="a run folder, a model-card folder or a .safetensors checkpoint")
    source.add_argument("--pretrained", metavar="MODEL",
                        help=f"bundled CIFAR-10 weights of MODEL (see `cct models`; without either option: {DEFAULT_MODEL})")


def _add_inference_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, mps or auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cct", description="Compact Convolutional Transformers")
    parser.add_argument("--version", action="version", version=f"cct {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("models", help="list model variants with parameters and MACs")
    p.add_argument("pattern", nargs="?", default="*", help="part of a name, e.g. 'keras', or a shell-style pattern, "
                   "e.g. 'cct_7*'")
    p.add_argument("--pretrained", action="store_true", help="only models with bundled weights")
    p.set_defaults(func=_models)

    p = commands.add_parser("recipes", help="list the named training recipes: what each is for, and every field")
    p.add_argument("names", nargs="*", help="only these recipes (default: all)")
    p.set_defaults(func=_recipes)

    p = commands.add_parser("train", help="train a model with a named recipe")
    p.add_argument("--model", help="default: cct_keras, or the model of --init-from")
    p.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, or a folder with train/ and test/")
    p.add_argument("--recipe", default="keras-example", help="a named recipe (`cct recipes` lists them; default: "
                   "keras-example)")
    p.add_argument("--data-dir", default="data", help="where CIFAR lives or is downloaded to (default: ./data)")
    p.add_argument("--out", help="run folder, new or empty (default: runs/<model>-<dataset>-<time>, or with -2, -3, ... "
                   "if a run started in the same second)")
    p.add_argument("--device", default="auto",
                   help="where training runs: auto (default: cuda if there is a GPU, else cpu), cpu, cuda, cuda:1 or mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype; auto: bf16 where the device computes it natively, else fp32")
    for flag, default, text in (
            ("channels-last", True, "convolutions on channels-last tensors"),
            ("compile", False, "torch.compile the model"),
            ("fused-optimizer", True, "AdamW in one fused kernel, not torch's default implementation"),
            ("fold-attention", True, "attention with heads as wide as the model multiplies weights, not activations "
                                     "(same math)"),
            ("keep-freed-memory", True, "glibc keeps freed blocks for reuse instead of faulting fresh pages in each "
                                        "step"),
            ("mkl-avx2", True, "MKL runs its AVX2 kernels on CPUs with AVX2 not made by Intel (AMD's), not generic "
                               "ones"),
            ("split-batch-threads", True, "on the CPU, training steps and fused inference split each batch between "
                                          "two threads, each with half the cores")):
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=default,
                       help=f"{text} (default: {'on' if default else 'off'})")
    p.add_argument("--threads", type=integer_in(1), help="CPU threads (default: one per available core)")
    p.add_argument("--init-from", metavar="SOURCE",
                   help="start from these weights (fine-tuning): a run folder, card folder or checkpoint, or a model "
                        "with bundled weights; the head is made anew for the dataset's classes")
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--seed", int)):
        p.add_argument(flag, type=kind, help=f"the recipe's {flag[2:].replace('-', '_')}, overridden")
    p.add_argument("--limit-train", type=int, help="train on the first N training images only")
    p.add_argument("--limit-test", type=int, help="test on a fixed random N of the test images")
    p.add_argument("--val-size", type=int, help="the last N training images validate")
    p.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the model config, e.g. --model-arg positional_embedding=sine")
    p.add_argument("--recipe-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the recipe (see `cct recipes`), e.g. --recipe-arg ema_decay=0.999")
    p.add_argument("--nproc", type=integer_in(1), help="train in N processes (torchrun on this machine; default: 1, "
                   "or as many as the run of --resume or --config)")
    p.add_argument("--checkpoint-every", type=integer_in(0), default=0, metavar="K",
                   help="also save the training state every K steps (it is always saved at epoch ends)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log the metrics for TensorBoard in RUN/tensorboard (needs the tensorboard extra)")
    saved = p.add_mutually_exclusive_group()
    saved.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its last saved state, "
                       "with its own config (--dataset or --data-dir: where its data lives now, if moved)")
    saved.add_argument("--config", metavar="RUN", help="train anew with the whole config of RUN (a run folder or "
                       "a config.json: model, data, recipe, runtime), into --out")
    p.set_defaults(func=_train)

    p = commands.add_parser("evaluate", help="top-1, top-5, per-class accuracy and a confusion matrix")
    _add_model_source(p)
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", help="where CIFAR lives (default: the run's, else ./data)")
    _add_inference_device(p)
    p.add_argument("--out", help="the confusion matrix, a .png file (default: CHECKPOINT-DATASET-confusion.png beside "
                   "the checkpoint)")
    p.add_argument("--json", action="store_true", help="print JSON (with the confusion matrix) instead of a table")
    p.set_defaults(func=_evaluate)

    p = commands.add_parser("predict", help="top-k classes of image files")
    p.add_argument("images", nargs="+", help="image files, or folders of them (searched below too)")
    _add_model_source(p)
    p.add_argument("--top-k", type=integer_in(1), default=5, help="how many classes to show (default: 5)")
    _add_inference_device(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_predict)

    p = commands.add_parser("explain", help="draw the sequence-pooling weights of each token over images")
    p.add_argument("images", nargs="+", help="image files, or folders of them (searched below too)")
    _add_model_source(p)
    p.add_argument("--out", help="a .png file to write for one image file, else the folder to write "
                   "<image name>.explain.png in (default: here)")
    _add_inference_device(p)
    p.set_defaults(func=_explain)

    p = commands.add_parser("export", help="export a checkpoint for deployment (ONNX, dynamic batch size)")
    _add_model_source(p)
    p.add_argument("--out", help="the .onnx file to write (default: beside the checkpoint; for bundled "
                   "weights, MODEL.onnx here)")
    p.set_defaults(func=_export)

    p = commands.add_parser("serve", help="a JSON API and a web page for a model, on loopback")
    _add_model_source(p)
    p.add_argument("--port", type=integer_in(0, 65535), default=8000, help="default: 8000; 0: any free port")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this machine "
                   "only; 0.0.0.0: every network; '::' the same over IPv6)")
    _add_inference_device(p)
    p.add_argument("--max-upload-mb", type=integer_in(1), default=10, help="the largest upload taken, in MB "
                   "(default: 10)")
    p.add_argument("--max-concurrent", type=integer_in(1), default=4, help="predictions at once; others wait "
                   "(default: 4)")
    p.set_defaults(func=_serve)

    p = commands.add_parser("card", help="write a model card folder (config.json, model.safetensors, README.md) "
                            "for a finished run, with its test results")
    p.add_argument("run", help="a run folder")
    p.add_argument("--dataset", help="where the run's dataset folder lives now, for the test results (default: "
                   "where the run found it)")
    p.add_argument("--data-dir", help="where the run's CIFAR lives, for the test results (default: the run's)")
    p.add_argument("--out", help="card folder to write (default: RUN/card)")
    p.set_defaults(func=_card)

    p = commands.add_parser("convert-keras", help="import the seed Keras model's weights into cct_keras")
    p.add_argument("weights", help="a .keras, .weights.h5 or .h5 file saved from the keras.io CCT")
    p.add_argument("--out", default="cct_keras.safetensors", help="the .safetensors checkpoint to write")
    p.set_defaults(func=_convert_keras)
    for command in commands.choices.values():
        command.set_defaults(usage_error=command.error)  # a stray argument shows its command's usage
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "images") and not any(a.startswith("-") for a in extra):
        args.images += extra  # images after options (`cct predict a.jpg --json b.jpg`): argparse stops at them
    elif extra:
        args.usage_error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    from PIL import Image
    # open_image refuses images above its pixel limit with a one-line error; PIL warns of them first
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        return args.func(args) or 0
    except CCTError as e:
        _error(str(e))
        return 1
    except KeyboardInterrupt:
        if _speaks():
            print("cct: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`cct models | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 1
