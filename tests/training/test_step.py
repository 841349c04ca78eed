"""GradientStep: a batch split between threads gives the gradients of one pass over it, reproducibly."""

import torch
import torch.nn.functional as F

import cct
from cct.models.layers import keep_mask, own_mask_seeds
from cct.runtime import Runtime
from cct.training import GradientStep


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, label_smoothing=0.1)


def step_gradients(model: torch.nn.Module, step: GradientStep, x: torch.Tensor, y: torch.Tensor):
    model.zero_grad(set_to_none=True)
    logits, loss = step(x, y)
    return logits, loss, [p.grad.clone() for p in model.parameters()]


def test_two_threads_give_the_logits_loss_and_gradients_of_one_pass():
    runtime = Runtime(device="cpu", precision="fp32", threads=2).resolve()
    assert runtime.batch_parts() == 2
    assert Runtime(device="cpu", threads=2, split_batch_threads=False).resolve().batch_parts() == 1
    torch.manual_seed(0)
    model = runtime.prepare(cct.create_model("cct_keras")).eval()  # no dropout: the passes compare exactly
    x, y = torch.rand(9, 3, 32, 32).to(memory_format=torch.channels_last), torch.randint(0, 10, (9,))
    one = step_gradients(model, GradientStep(model, smoothed_cross_entropy, runtime), x, y)
    two = step_gradients(model, GradientStep(model, smoothed_cross_entropy, runtime, parts=2), x, y)
    assert torch.allclose(one[0], two[0], atol=1e-5) and torch.allclose(one[1], two[1], atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(one[2], two[2]))
    assert torch.get_num_threads() == 2  # the caller's threads, whatever the parts' threads set
    single = step_gradients(model, GradientStep(model, smoothed_cross_entropy, runtime, parts=2), x[:1], y[:1])
    assert single[0].shape == (1, 10)
    Runtime(device="cpu").resolve()  # back to one thread per core for the other tests


def test_between_split_steps_the_calling_thread_works_on_one_thread():
    """Its OpenMP helper thread would busy-wait after each of its ops on a core the parts need."""
    runtime = Runtime(device="cpu", precision="fp32", threads=2).resolve()
    torch.manual_seed(0)
    model = runtime.prepare(cct.create_model("cct_keras")).eval()
    x, y = torch.rand(8, 3, 32, 32).to(memory_format=torch.channels_last), torch.randint(0, 10, (8,))
    part_threads = []
    model.register_forward_hook(lambda module, inputs, output: part_threads.append(torch.get_num_threads()))
    one_pass, split = (GradientStep(model, smoothed_cross_entropy, runtime, parts=parts) for parts in (1, 2))
    with one_pass.stepping():
        assert torch.get_num_threads() == 2  # one pass uses both itself
        one = step_gradients(model, one_pass, x, y)
    with split.stepping():
        assert torch.get_num_threads() == 1
        two = step_gradients(model, split, x, y)
        assert torch.get_num_threads() == 1 and part_threads == [2, 1, 1]
    assert torch.get_num_threads() == 2
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(one[2], two[2]))
    Runtime(device="cpu").resolve()


def test_parts_draw_their_dropout_masks_from_torchs_seed_in_order():
    runtime = Runtime(device="cpu", precision="fp32", threads=2).resolve()
    model = runtime.prepare(cct.create_model("cct_keras")).train()
    step = GradientStep(model, smoothed_cross_entropy, runtime, parts=2)
    x, y = torch.rand(8, 3, 32, 32).to(memory_format=torch.channels_last), torch.randint(0, 10, (8,))
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(step_gradients(model, step, x, y)[2])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    Runtime(device="cpu").resolve()


def test_a_threads_own_mask_seeds_decide_its_masks_and_leave_torchs_generator_alone():
    shape = torch.Size((64, 64))
    torch.manual_seed(0)
    with own_mask_seeds(7):
        first = keep_mask(shape, 0.5, torch.float32, torch.device("cpu"))
    untouched = torch.randint(0, 2**62, (1,))
    with own_mask_seeds(7):
        again = keep_mask(shape, 0.5, torch.float32, torch.device("cpu"))
    with own_mask_seeds(8):
        other = keep_mask(shape, 0.5, torch.float32, torch.device("cpu"))
    torch.manual_seed(0)
    assert torch.equal(torch.randint(0, 2**62, (1,)), untouched)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert 0.4 < (first == 0).float().mean() < 0.6
