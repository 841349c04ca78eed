"""Wall-clock seconds of training until the test top-1 reaches each target (default 78% and 80%), on the
real CIFAR-10, with a named recipe. The test set is scored after every epoch; that scoring is not counted.

    python benchmarks/time_to_accuracy.py --model cct_4_3x2_32 --recipe fast --data-dir ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import time

import cct
from cct.cli import key_value
from cct.data import load_dataset
from cct.evaluation import evaluate
from cct.runtime import Runtime
from cct.training import RunConfig, get_recipe, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cct_4_3x2_32")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--data-dir", default="../shared/data/cifar10")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--recipe-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the recipe, as `cct train --recipe-arg` does")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.78, 0.80])
    parser.add_argument("--out", help="the run folder (default: runs/<model>-cifar10-<time>, as cct train's, so "
                        "that a second run keeps the first)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (as cct train --compile)")
    args = parser.parse_args()

    recipe = get_recipe(args.recipe)
    recipe = recipe.with_overrides({"epochs": args.epochs or recipe.epochs, **dict(args.recipe_arg)})
    (test,) = load_dataset("cifar10", args.data_dir, splits=("test",))
    runtime = Runtime(compile=args.compile).resolve()
    started = time.perf_counter()
    scoring = 0.0
    reached: dict[float, tuple[int, float, float]] = {}

    def score(epoch: int, model: cct.CCT) -> None:
        nonlocal scoring
        t0 = time.perf_counter()
        wall = t0 - started - scoring
        top1 = evaluate(model, test, 500, runtime, recipe.tta_flip).top1
        scoring += time.perf_counter() - t0
        print(f"  epoch {epoch}: test top-1 {top1:.2%} after {wall:.0f}s of training", flush=True)
        for target in args.targets:
            if top1 >= target and target not in reached:
                reached[target] = (epoch, wall, top1)

    train(RunConfig(model=args.model, dataset="cifar10", recipe=recipe, data_dir=args.data_dir, out=args.out,
                    runtime=runtime), on_epoch_end=score)
    print(f"\n{args.model}, recipe {recipe.name}, {runtime.device} {runtime.precision}, {runtime.threads} threads:")
    for target in args.targets:
        if target in reached:
            epoch, wall, top1 = reached[target]
            print(f"  {target:.0%} test top-1: {wall:.0f} s wall ({wall / 60:.1f} min), epoch {epoch} ({top1:.2%})")
        else:
            print(f"  {target:.0%} test top-1: not reached in {recipe.epochs} epochs")


if __name__ == "__main__":
    main()
