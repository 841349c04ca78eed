"""Training and inference throughput (images/s) of CCT models: our runtime against a plain PyTorch baseline
(fp32, eager, contiguous memory, unfused AdamW and inference, unfolded attention, glibc's default allocator
settings, the MKL kernels MKL picks by CPU vendor), measured in the same run (each in a process of its own),
with the fraction of this machine's matmul peak (measured, against the model's nominal FLOPs). Inference runs
`cct.evaluation.predict_logits`, the path of `cct evaluate` and `Classifier`, on a model prepared for
inference (ours: in bf16, its weights cast once, through oneDNN Graph). With `keras` installed (the `bench`
extra) it times the identical Keras model, from the start of its first step to the end of its last, as ours
(`fit` and `predict` outside their steps left out).

    python benchmarks/throughput.py [--models cct_keras cct_7_3x1_32] [--steps 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import torch
import torch.nn.functional as F

import cct
from cct.runtime import Runtime, bf16_native
from cct.training import GradientStep

ROUNDS = 3
BASELINE = Runtime(precision="fp32", channels_last=False, compile=False, fused_optimizer=False,
                   fused_inference=False, fold_attention=False, keep_freed_memory=False, mkl_avx2=False,
                   split_batch_threads=False)


def matmul_peak(dtype: torch.dtype, device: torch.device) -> float:
    """Measured GFLOP/s of a square matmul on `device`, the best of ROUNDS rounds like every other figure."""
    n, repeat = (8192, 50) if device.type == "cuda" else (2048, 10)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return best_rate(lambda: a @ b, 2 * n ** 3, ROUNDS, repeat, device=device) / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(fn, items: int, rounds: int, steps: int = 1, budget_s: float = 30.0,
              device: torch.device = torch.device("cpu")) -> float:
    """Items/s of `fn`, which handles `items` per call: the best of `rounds` rounds of `steps` calls (fewer,
    at least 2, once a round has spent budget_s / rounds), after one warmup call. Best-of-rounds, as timeit
    does, for every contender alike: this shared machine's speed drifts by up to a third between runs."""
    fn()
    synchronize(device)
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        done = 0
        while done < steps and (done < min(2, steps) or time.perf_counter() - started < budget_s / rounds):
            fn()
            done += 1
        synchronize(device)
        best = max(best, items * done / (time.perf_counter() - started))
    return best


def training_rate(name: str, runtime: Runtime, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    runtime = runtime.resolve()
    model = cct.create_model(name)
    forward = runtime.prepare(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-7, weight_decay=1e-4,
                                  fused=runtime.fused_optimizer or None)
    size = model.config.img_size
    # on the compute device, as `cct train` keeps the whole dataset
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=runtime.torch_device)
    labels = torch.randint(0, model.config.num_classes, (batch,), device=runtime.torch_device)

    gradients = GradientStep(forward, lambda logits, labels: F.cross_entropy(logits, labels, label_smoothing=0.1),
                             runtime, parts=runtime.batch_parts())

    def step():
        optimizer.zero_grad(set_to_none=True)
        gradients(cct.evaluation.to_model_input(images, runtime.torch_device, runtime.channels_last), labels)
        optimizer.step()

    with gradients.stepping():
        return best_rate(step, batch, ROUNDS, steps, device=runtime.torch_device)


def inference_rate(name: str, runtime: Runtime, batch: int, steps: int) -> float:
    runtime = runtime.resolve()
    model = cct.create_model(name).eval()
    forward = runtime.prepare(model, frozen=True)
    size = model.config.img_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    return best_rate(lambda: cct.evaluation.predict_logits(forward, images, batch, runtime), batch, ROUNDS, steps,
                     device=runtime.torch_device)


def keras_rates(backend: str, batch: int, infer_batch: int, steps: int) -> tuple[float, float, str] | None:
    """Training and inference images/s of the keras.io CCT built with Keras 3 (the example's optimiser and
    loss) and the device Keras ran it on, or None without keras."""
    os.environ["KERAS_BACKEND"] = backend
    try:
        import keras

        from cct.keras_reference import build_keras_cct
    except ImportError:
        return None
    import numpy as np

    class StepsTimer(keras.callbacks.Callback):
        """Seconds from the start of a fit's (or predict's) first step to the end of its last. With TensorFlow,
        fit and predict sometimes return seconds after their last step (fit: ~4 s after 20 steps of ~0.3 s),
        in the teardown of their data iterator: a cost per call, not per image, so it is left out."""

        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.started

        on_predict_begin, on_predict_end = on_train_begin, on_train_end

    model = build_keras_cct()
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    x = np.random.randint(0, 256, (batch * steps, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[np.random.randint(0, 10, batch * steps)]
    timer = StepsTimer()

    def best_timed_rate(call) -> float:
        """Images/s of `call` (all of x), the best of ROUNDS calls after a warmup call, each timed by `timer`."""
        call()
        rates = []
        for _ in range(ROUNDS):
            call()
            rates.append(len(x) / timer.seconds)
        return max(rates)

    train = best_timed_rate(lambda: model.fit(x, y, batch_size=batch, verbose=0, callbacks=[timer]))
    infer = best_timed_rate(lambda: model.predict(x, batch_size=infer_batch, verbose=0, callbacks=[timer]))
    return train, infer, keras.distribution.list_devices()[0]


def in_own_process(fn, *args):
    """fn(*args) in a fresh process, so that a runtime's process-wide settings (the allocator's, MKL's kernels,
    which MKL picks at a routine's first call) apply to one contender only."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def matmul_peaks() -> dict[str, float]:
    """This machine's fp32 (and native bf16) matmul peaks, with our runtime's BLAS settings (MKL's AVX2
    kernels on CPUs not made by Intel: the fastest its BLAS goes)."""
    device = Runtime().resolve().torch_device
    peak = {"fp32": matmul_peak(torch.float32, device)}
    if bf16_native(device):  # emulated bf16 takes minutes to measure, and "auto" does not use it
        peak["bf16"] = matmul_peak(torch.bfloat16, device)
    return peak


def contender_rates(label: str, runtime: Runtime, args: argparse.Namespace, flops: dict[str, int],
                    peak: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Training and inference images/s of each model under `runtime`, printed with their fraction of the peak."""
    resolved = runtime.resolve()
    print(f"\n{label}: {resolved}", flush=True)
    top = peak["bf16" if resolved.precision == "bf16" else "fp32"]
    rates = {}
    for name in args.models:
        train = training_rate(name, runtime, args.batch, args.steps)
        infer = inference_rate(name, runtime, args.infer_batch, args.steps)
        rates[name] = (train, infer)
        print(f"  {name:<13} train {train:8.0f} img/s ({3 * flops[name] * train / 1e9 / top:5.1%} of "
              f"{resolved.precision} peak) | inference {infer:8.0f} img/s ({flops[name] * infer / 1e9 / top:5.1%})",
              flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cct_keras", "cct_7_3x1_32"], help="models to time")
    parser.add_argument("--steps", type=int, default=20, help="timed steps a round, training and inference")
    parser.add_argument("--batch", type=int, default=128, help="training batch")
    parser.add_argument("--infer-batch", type=int, default=256, help="inference batch")
    parser.add_argument("--compile", action="store_true", help="also time our runtime with torch.compile")
    parser.add_argument("--keras-backend", default="tensorflow", help="backend for the Keras model")
    args = parser.parse_args()

    variants = {"baseline": BASELINE, "ours": Runtime()}
    if args.compile:
        variants["ours+compile"] = Runtime(compile=True)
    baseline = BASELINE.resolve()
    print(f"torch {torch.__version__} | {baseline.device} | {baseline.threads} threads")
    peak = in_own_process(matmul_peaks)
    print("matmul peak: " + ", ".join(f"{dtype} {flops:.0f} GFLOP/s" for dtype, flops in peak.items())
          + ("" if "bf16" in peak else " (bf16 is not native here)"))
    models = {name: cct.create_model(name) for name in args.models}
    flops = {name: 2 * cct.count_macs(model, include_attention=True) for name, model in models.items()}
    rates = {(name, label): rate for label, runtime in variants.items()
             for name, rate in in_own_process(contender_rates, label, runtime, args, flops, peak).items()}
    for name in args.models:
        print(f"\n{name}: {cct.count_parameters(models[name]):,} parameters, {flops[name] / 1e6:.0f} MFLOP forward "
              "per image")
        base = rates[name, "baseline"]
        for label in variants:
            if label != "baseline":
                train, infer = rates[name, label]
                print(f"  {label} / baseline: train x{train / base[0]:.2f}, inference x{infer / base[1]:.2f}")
        if name in ("cct_keras", "cct_2_3x2_32_keras"):
            keras = keras_rates(args.keras_backend, args.batch, args.infer_batch, args.steps)
            if keras is None:
                print("  keras: not installed (pip install -e '.[bench]' to time the Keras model)")
            else:
                print(f"  keras/{args.keras_backend:<6} train {keras[0]:8.0f} img/s | inference {keras[1]:8.0f} img/s "
                      f"({keras[2]})")
                print(f"  ours / keras: train x{rates[name, 'ours'][0] / keras[0]:.2f}, "
                      f"inference x{rates[name, 'ours'][1] / keras[1]:.2f}")


if __name__ == "__main__":
    main()
