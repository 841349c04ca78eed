import copy
import os
import subprocess
import sys
import threading

import pytest
import torch

import cct
from cct.evaluation import predict_logits, to_model_input
from cct.runtime import FusedInference, Runtime, available_cpus, cpu_vendor_and_flags


def test_resolve_makes_every_choice_concrete():
    runtime = Runtime(device="cpu", threads=1).resolve()
    assert runtime.device == "cpu" and runtime.precision in ("fp32", "bf16") and runtime.threads == 1
    assert torch.get_num_threads() == 1
    Runtime(device="cpu").resolve()  # back to one thread per core for the other tests


def test_a_runtime_in_words_names_more_threads_than_cores(monkeypatch):
    cores = available_cpus()
    precision = Runtime(device="cpu").resolve().precision
    assert Runtime(device="cpu", threads=1).resolve().describe() == f"cpu {precision}, 1 thread"
    crowded = Runtime(device="cpu", threads=cores + 2).resolve().describe()
    assert crowded == f"cpu {precision}, {cores + 2} threads ({cores + 2} on {cores} cores: fewer would be faster)"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # torchrun's processes, each with the threads given
    assert Runtime(device="cpu", threads=2).resolve().describe() == (f"cpu {precision}, 2 threads each ({2 * cores} on "
                                                                     f"{cores} cores: fewer would be faster)")
    assert Runtime(device="cpu", threads=1).resolve().describe() == f"cpu {precision}, 1 thread each"
    monkeypatch.undo()
    Runtime(device="cpu").resolve()  # back to one thread per core for the other tests


@pytest.mark.parametrize("runtime", [Runtime(), Runtime(device="cpu"), Runtime(device="cpu", precision="fp32")])
def test_an_unresolved_runtime_does_not_prepare_a_model(runtime):
    # torch said "Expected one of cpu, cuda, ... device type at start of device string: auto", or "'>=' not
    # supported between instances of 'NoneType' and 'int'" for threads
    with pytest.raises(cct.CCTError, match=r"^a Runtime prepares a model once resolved: Runtime\(...\)\.resolve\(\)"):
        runtime.prepare(cct.create_model("cct_2_3x2_32"), frozen=True)


def test_without_cpu_affinity_every_core_counts(monkeypatch):
    # macOS and Windows have no os.sched_getaffinity: Runtime.resolve raised AttributeError there
    cores = available_cpus()
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: cores + 1)
    assert available_cpus() == cores + 1
    assert Runtime(device="cpu").resolve().threads == cores + 1
    monkeypatch.undo()
    Runtime(device="cpu").resolve()  # back to one thread per core for the other tests


def test_bf16_autocast_computes_linear_layers_in_bf16():
    model = cct.create_model("cct_keras").eval()
    x = torch.rand(2, 3, 32, 32)
    with Runtime(device="cpu", precision="bf16").resolve().autocast():
        assert model.head(torch.rand(2, 128)).dtype == torch.bfloat16
        low = model(x).float()
    with Runtime(device="cpu", precision="fp32").resolve().autocast():
        assert model.head(torch.rand(2, 128)).dtype == torch.float32
        full = model(x)
    assert torch.allclose(low, full, atol=0.1) and not torch.equal(low, full)


def test_fp16_needs_cuda():
    with pytest.raises(cct.CCTError, match="fp16 needs a CUDA device"):
        Runtime(device="cpu", precision="fp16").resolve()


def test_a_bad_runtime_field_is_a_clear_error():
    expected = '"auto", "fp32", "bf16" or "fp16"'
    with pytest.raises(cct.CCTError, match=f"^runtime field precision: expected {expected}, got 'fp8'$"):
        Runtime(precision="fp8")
    with pytest.raises(cct.CCTError, match="^runtime field threads: expected null or an integer of at least 1, got 0$"):
        Runtime(threads=0)


def test_unusable_device_is_a_clear_error():
    with pytest.raises(cct.CCTError, match="device 'cuda:7' is not usable here"):
        Runtime(device="cuda:7").resolve()
    # it was torch's list of 20 device types ("Expected one of cpu, cuda, ipu, xpu, mkldnn, opengl, ...")
    with pytest.raises(cct.CCTError, match=r"^device 'gpu': expected auto, cpu, cuda, cuda:N \(the Nth GPU\), mps "):
        Runtime(device="gpu").resolve()


def test_channels_last_and_compile_keep_the_outputs():
    torch.manual_seed(0)
    model = cct.create_model("cct_keras").eval()  # its attention folded, as prepare does by default
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    plain = predict_logits(model, images)
    runtime = Runtime(device="cpu", precision="fp32", channels_last=True, compile=True).resolve()
    compiled = runtime.prepare(model)
    assert model.tokenizer.stages[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.blocks[0].attn.fold
    with torch.no_grad():
        out = compiled(images.float().div(255).contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, plain, atol=1e-4)


def test_compiled_dropout_zeroes_elements_at_its_rate():
    torch.manual_seed(0)  # compiled, the masks come from torch, not numpy (`cct train --compile`)
    layer = torch.compile(cct.models.layers.Dropout(0.1).train())
    first, second = layer(torch.ones(1_000_003)), layer(torch.ones(1_000_003))
    assert torch.allclose(first.unique(), torch.tensor([0.0, 1 / 0.9]))
    assert (first == 0).float().mean().item() == pytest.approx(0.1, abs=0.002)
    assert (first != second).float().mean().item() == pytest.approx(2 * 0.1 * 0.9, abs=0.003)


def test_compiled_drop_path_drops_whole_samples_at_its_rate():
    torch.manual_seed(0)  # numpy's per-sample masks, traced, broke `cct train --compile` on the CPU
    out = torch.compile(cct.models.layers.DropPath(0.25).train())(torch.ones(20_000, 3, 2)).flatten(1)
    assert torch.allclose(out.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert (out.std(1) == 0).all()
    assert (out[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.015)


def test_test_time_flip_averages_an_image_and_its_mirror():
    torch.manual_seed(0)
    model = cct.create_model("cct_2_3x2_32").eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    both = predict_logits(model, images, tta_flip=True)
    expected = (predict_logits(model, images) + predict_logits(model, images.flip(-1))) / 2
    assert torch.allclose(both, expected, atol=1e-5)


def test_frozen_bf16_model_runs_fused_in_bf16_and_keeps_the_logits():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    full = predict_logits(cct.create_model("cct_keras", pretrained="cifar10"), images)
    runtime = Runtime(device="cpu", precision="bf16").resolve()
    model = runtime.prepare(cct.create_model("cct_keras", pretrained="cifar10").eval(), frozen=True)
    assert isinstance(model, FusedInference) and model.config.name == "cct_2_3x2_32_keras"
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    assert {p.dtype for p in model.parameters() if id(p) not in norms} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if id(p) in norms} == {torch.float32}  # as oneDNN fuses them
    for _ in range(3):  # TorchScript optimises (and oneDNN compiles) the graph on the second call
        low = predict_logits(model, images, runtime=runtime)
        assert low.dtype == torch.float32 and not torch.equal(low, full)
        assert (low - full).abs().max() < 0.05 * full.abs().max()
        assert torch.equal(low.argmax(1), full.argmax(1))
    assert [type(g) for g in model.graphs.values()] == [torch.jit.RecursiveScriptModule]
    with torch.profiler.profile() as profile:
        predict_logits(model, images, runtime=runtime)
    ops = {event.name for event in profile.events()}
    assert any(op.startswith("LlgaPartition") for op in ops) and "aten::native_layer_norm" not in ops


def test_fused_fp32_inference_matches_eager_for_every_batch_and_image_size():
    torch.manual_seed(0)
    eager = cct.create_model("cct_keras").eval()
    runtime = Runtime(device="cpu", precision="fp32").resolve()
    fused = runtime.prepare(copy.deepcopy(eager), frozen=True)
    for size, batch in [(32, 8), (32, 8), (32, 8), (32, 3), (32, 1), (22, 5), (22, 5), (22, 5)]:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        out = predict_logits(fused, images, runtime=runtime)
        assert out.shape == (batch, 10)
        assert torch.allclose(out, predict_logits(eager, images), atol=1e-4)
    x = to_model_input(torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8), "cpu")
    with torch.no_grad():  # more than max_batch images: in parts of 64, four times, and 44
        assert torch.allclose(fused(x), eager(x), atol=1e-4)
    # oneDNN Graph cannot compile the 22x22 graph (its resampled position table): that size ran eager
    assert isinstance(fused.graphs[(3, 32, 32), (1, 96, 3), torch.float32], torch.jit.RecursiveScriptModule)
    assert fused.graphs[(3, 22, 22), (1, 66, 3), torch.float32] is fused.model


def test_fused_inference_splits_a_warm_graphs_batches_between_threads():
    torch.manual_seed(0)
    eager = cct.create_model("cct_keras").eval()
    runtime = Runtime(device="cpu", precision="fp32", threads=2).resolve()
    assert runtime.batch_parts() == 2
    fused = runtime.prepare(copy.deepcopy(eager), frozen=True)
    calls = []  # 22x22 images run eager (oneDNN cannot compile their graph), so the model's hooks see its calls
    fused.model.register_forward_hook(
        lambda module, inputs, output: calls.append((threading.current_thread().name, torch.get_num_threads(),
                                                     len(inputs[0]))))
    x = to_model_input(torch.randint(0, 256, (130, 3, 22, 22), dtype=torch.uint8), "cpu")
    with torch.no_grad():
        first = fused(x)  # traced, then run in parts of 64, on this thread
        calls.clear()
        second = fused(x)
        expected = eager(x)
    assert torch.allclose(first, expected, atol=1e-4) and torch.allclose(second, expected, atol=1e-4)
    # a run of whole parts for each thread, each with one intra-op thread
    assert sorted(calls) == [("cct-part_0", 1, 64), ("cct-part_1", 1, 2), ("cct-part_1", 1, 64)]
    assert torch.get_num_threads() == 2
    Runtime(device="cpu").resolve()


def test_fused_inference_reports_bad_images_as_eager_does():
    runtime = Runtime(device="cpu", precision="fp32").resolve()
    model = cct.create_model("cct_keras").eval()
    with pytest.raises(cct.CCTError) as eager:
        model(torch.rand(2, 4, 32, 32))
    fused = runtime.prepare(model, frozen=True)
    message = r"takes float images \(B, 3, H, W\) in \[0, 1\], got float32 \(2, 4, 32, 32\)"
    with pytest.raises(cct.CCTError, match=message) as error:
        fused(torch.rand(2, 4, 32, 32))
    assert str(error.value) == str(eager.value)


def test_fused_inference_stays_in_eval_mode():
    torch.manual_seed(0)
    eager = cct.create_model("cct_keras").eval()
    runtime = Runtime(device="cpu", precision="fp32").resolve()
    fused = runtime.prepare(copy.deepcopy(eager), frozen=True)
    predict_logits(fused, torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), runtime=runtime)
    fused.train()  # as predict_logits restores a model's mode, and as a user may
    assert not fused.training and not fused.model.training
    # a layout not traced yet is traced now: in eval mode, without dropout
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fused(x), eager(x), atol=1e-4)
    assert isinstance(fused.graphs[(3, 32, 32), (1024, 32, 1), torch.float32], torch.jit.RecursiveScriptModule)


def test_channels_last_off_gives_contiguous_inputs():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    converted = to_model_input(images, "cpu")
    assert converted.is_contiguous(memory_format=torch.channels_last) and torch.equal(converted, images.float() / 255)
    plain = to_model_input(images, "cpu", channels_last=False)
    assert plain.is_contiguous() and torch.equal(plain, images.float() / 255)


@pytest.mark.parametrize("name", ["cct_keras", "vit_lite_7_4_32"])  # sequence pooling; class token
def test_under_bf16_autocast_the_encoder_stream_is_bf16(name):
    model = cct.create_model(name).eval()
    seen = []
    model.blocks[0].register_forward_hook(lambda module, inputs, output: seen.append((inputs[0].dtype, output.dtype)))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), Runtime(device="cpu", precision="bf16").resolve().autocast():
        model(x)
    model(x)
    assert seen == [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]


FAULTS = """
import resource, statistics, sys, torch, torch.nn.functional as F
import cct
from cct.runtime import keep_freed_memory
applied = sys.argv[1] == "keep" and keep_freed_memory()
torch.set_num_threads(1)
model = cct.create_model("cct_keras")
optimizer = torch.optim.AdamW(model.parameters())
images, labels = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
def step():
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
for _ in range(10):
    step()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, statistics.median(faults), sum(faults))
"""


def test_keep_freed_memory_stops_page_faults_in_training_steps():
    # one process each (one thread each), side by side, both from glibc's initial mmap threshold (128 KiB) with its
    # dynamic raising off: left dynamic, the default's faults varied from run to run (2,051 to 88,155 over the 10
    # steps), which no bound tells apart from the kept process's (3-2,051); keep_freed_memory overrides the setting
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    runs = [subprocess.Popen([sys.executable, "-c", FAULTS, mode], stdout=subprocess.PIPE, text=True, env=env)
            for mode in ("default", "keep")]
    outputs = [run.communicate()[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    (default_applied, _, default_total), (kept_applied, kept_median, kept_total) = map(str.split, outputs)
    assert (default_applied, kept_applied) == ("False", "True")
    default_total, kept_median, kept_total = float(default_total), float(kept_median), float(kept_total)
    # fresh pages faulted in over 10 steps after 10 to warm up, measured: ~1,197,000 by default, 3-515 kept (the
    # median step 0-0.5)
    assert default_total > 100_000 and kept_total < default_total / 100
    assert kept_median < 50


MKL_PRODUCT = """
import hashlib, sys, torch
from cct.runtime import mkl_avx2
applied = sys.argv[1] == "avx2" and mkl_avx2()
generator = torch.Generator().manual_seed(0)
a, b = torch.randn(300, 500, generator=generator), torch.randn(500, 200, generator=generator)
product = a @ b
error = (product.double() - a.double() @ b.double()).abs().max().item()
print(applied, hashlib.sha1(product.numpy().tobytes()).hexdigest(), error)
"""


def test_mkl_avx2_switches_mkl_to_other_kernels_on_cpus_not_made_by_intel():
    # a product's rounding tells MKL's kernels apart: fresh processes, as MKL picks them at a routine's first call
    runs = [subprocess.run([sys.executable, "-c", MKL_PRODUCT, mode], capture_output=True, text=True, check=True)
            for mode in ("default", "avx2")]
    (default_applied, default_bits, default_error), (applied, bits, error) = (r.stdout.split() for r in runs)
    vendor, flags = cpu_vendor_and_flags()
    expected = vendor not in ("", "GenuineIntel") and {"avx2", "fma"} <= flags and torch.backends.mkl.is_available()
    assert default_applied == "False" and applied == str(expected)
    assert (bits != default_bits) == expected
    assert float(default_error) < 1e-4 and float(error) < 1e-4  # the product of 500 terms, in fp32 either way


@pytest.mark.parametrize("fold", [True, False])
def test_prepare_folds_attention_where_it_saves_work(fold):
    keras = Runtime(device="cpu", precision="fp32", fold_attention=fold).resolve().prepare(
        cct.create_model("cct_keras"))
    paper = Runtime(device="cpu", fold_attention=fold).resolve().prepare(cct.create_model("cct_2_3x2_32"))
    assert [b.attn.fold for b in keras.blocks] == [fold, fold]
    assert not any(b.attn.fold for b in paper.blocks)
