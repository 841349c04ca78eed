"""The recipes' augmentations: random choices per image (kornia's policies draw per batch), mixing that keeps
images and soft targets consistent."""

import kornia
import pytest
import torch
from kornia.augmentation.auto import AutoAugment

from cct.cli import main
from cct.data import MixUpCutMix, build_augmentation
from cct.data.augment import OnRGB, PerImagePolicy, PerImageRandAugment
from cct.errors import CCTError
from tests.helpers import needs_kornia_policies


def _group_sizes(modules):
    """Record, for each call of each module, how many images it got; returns the list of records."""
    calls = []
    for index, module in enumerate(modules):
        module.register_forward_hook(lambda m, args, kwargs, out, i=index: calls.append(
            (i, len(args[0]), kwargs.get("params"))), with_kwargs=True)
    return calls


@needs_kornia_policies
def test_kornia_autoaugment_draws_one_subpolicy_per_batch_ours_draws_per_image():
    images = torch.rand(256, 3, 32, 32)
    torch.manual_seed(1)
    kornia_policy = AutoAugment("cifar10")
    kornia_policy(images)
    assert len(kornia_policy._params) == 1  # the sub-policy it drew, for the whole batch

    # ours: each image through the two operations of the sub-policy drawn for it, with the parameters those drew
    # for it, though each kind of operation runs once a stage for all the sub-policies that have it there
    ours = PerImagePolicy("cifar10")
    operations = [op for subpolicy in ours.subpolicies for op in subpolicy.children()]
    drawn_params = {}
    for op in operations:  # each records the parameters it draws
        op.forward_parameters = lambda shape, op=op, draw=op.forward_parameters: drawn_params.setdefault(
            op, draw(shape))
    calls = _group_sizes(operations)
    torch.manual_seed(3)
    out = ours(images)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, images)
    torch.manual_seed(3)
    drawn = torch.randint(len(ours.subpolicies), (256,))
    assert len(drawn.unique()) > 15 and len(calls) < 2 * len(drawn.unique())
    for k in drawn.unique().tolist():
        rows = (drawn == k).nonzero().squeeze(1)
        expected = images[rows]
        for op in ours.subpolicies[k].children():
            expected = op(expected, params=drawn_params[op])
        torch.testing.assert_close(out[rows], expected)


@needs_kornia_policies
def test_rand_augment_draws_operations_and_magnitudes_per_image():
    images = torch.rand(256, 3, 32, 32)
    torch.manual_seed(2)
    for std in (0.0, 0.5):
        augment = PerImageRandAugment(num_ops=2, magnitude=9, magnitude_std=std)
        calls = _group_sizes(augment.ops)
        out = augment(images)
        assert sum(size for _, size, _ in calls) == 2 * 256 and len({i for i, _, _ in calls}) == 15
        assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
        levels = [params[augment.ops[i]._factor_name].abs() for i, _, params in calls
                  if augment.ops[i].magnitude_range is not None]
        distinct = max(len(level.unique()) for level in levels)
        assert distinct == 1 if std == 0 else distinct > 5  # magnitude noise is per image


@needs_kornia_policies
def test_policies_run_on_grayscale_images_as_rgb_with_equal_channels():
    gray = torch.rand(256, 1, 32, 32)
    for policy in (PerImagePolicy("cifar10"), PerImageRandAugment(num_ops=2, magnitude=9, magnitude_std=0.5)):
        torch.manual_seed(3)
        as_rgb = policy(gray.expand(-1, 3, -1, -1))  # kornia refuses 1-channel images
        assert not torch.equal(as_rgb, gray.expand(-1, 3, -1, -1))
        assert torch.allclose(as_rgb[:, 1:], as_rgb[:, :1].expand(-1, 2, -1, -1), atol=1e-6)  # channels stay equal
        torch.manual_seed(3)
        assert torch.equal(OnRGB(policy)(gray), as_rgb[:, :1])
    augment = build_augmentation(32, crop_padding=4, hflip=True, auto_augment=True, rand_augment=(2, 9, 0.5))
    assert augment(gray).shape == gray.shape and augment(torch.rand(8, 3, 32, 32)).shape == (8, 3, 32, 32)


def test_policies_are_refused_under_kornia_before_0_9_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    """kornia 0.8.2, the last release for Python 3.10, zeroes half of the policies' rotations, shears and
    translations (a random sign made of a bool mask) and posterizes to 0-4 bits."""
    monkeypatch.setattr(kornia, "__version__", "0.8.2")
    for policy, make in (("AutoAugment", PerImagePolicy), ("RandAugment", lambda: PerImageRandAugment(2, 9, 0.5))):
        with pytest.raises(CCTError, match=rf"^{policy}: needs kornia >= 0.9 \(on Python >= 3.11\); kornia 0.8.2, "):
            make()
    monkeypatch.chdir(tmp_path)
    for recipe, field in (("small-cpu", "auto_augment"), ("cct-paper-300", "rand_augment")):
        assert main(["train", "--recipe", recipe, "--dataset", str(tmp_path / "photos")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"cct: error: recipe field {field}: needs kornia >= 0.9 ") and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no run folder
    assert main(["recipes", "small-cpu", "keras-example"]) == 0
    lines = capsys.readouterr().out.splitlines()
    refused = [line for line in lines if line.startswith("  refused here: ")]
    assert refused == ["  refused here: recipe field auto_augment: needs kornia >= 0.9 (on Python >= 3.11); kornia "
                       "0.8.2, installed here, zeroes half of the policies' rotations, shears and translations"]
    assert lines.index(refused[0]) == 1  # under small-cpu's purpose line; keras-example has no policy
    monkeypatch.setattr(kornia, "__version__", "0.9.0")
    assert main(["recipes", "small-cpu"]) == 0 and "refused" not in capsys.readouterr().out
    PerImagePolicy(), PerImageRandAugment(2, 9, 0.5)


def test_resized_crop_and_erasing():
    torch.manual_seed(5)
    images = torch.rand(64, 3, 40, 40)
    out = build_augmentation(32, resized_crop_scale=(0.8, 1.0))(images)
    assert out.shape == (64, 3, 32, 32)
    erased = build_augmentation(40, random_erasing=1.0)(images)
    zeroed = (erased == 0).all(1).flatten(1).float().mean(1)
    # kornia's default area (0.02, 0.33) of every image, up to the box's whole pixels (0.0175 to 0.341 over 200
    # seeds); the bounds were 0.02 and 0.34, which 25 of those 200 batches failed
    assert ((zeroed >= 0.015) & (zeroed <= 0.345)).all()


def test_mixup_and_cutmix_targets_match_the_mixed_pixels():
    """Each image is a flat colour equal to its class / 10: a mixed image's mean is then the targets'
    expectation of class / 10, for MixUp (blend) and CutMix (pasted box) alike."""
    labels = torch.arange(10).repeat(13)
    images = (labels / 10).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()
    values = torch.arange(10) / 10
    torch.manual_seed(3)
    for mix in (MixUpCutMix(10, mixup_alpha=0.8), MixUpCutMix(10, cutmix_alpha=1.0),
                MixUpCutMix(10, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)):
        for _ in range(5):
            mixed, targets = mix(images, labels)
            assert targets.shape == (130, 10) and torch.allclose(targets.sum(1), torch.ones(130))
            assert torch.allclose(mixed.mean((1, 2, 3)), targets @ values, atol=1e-5)
            assert (targets.max(1).values < 1).any()  # some images really were mixed


def test_mixup_lambda_follows_beta_alpha():
    """Beta(0.2, 0.2) puts most of its mass near 0 and 1; kornia's own MixUp draws uniformly."""
    labels = torch.arange(2).repeat(2000)
    images = torch.zeros(4000, 3, 4, 4)
    torch.manual_seed(4)
    _, targets = MixUpCutMix(2, mixup_alpha=0.2)(images, labels)
    kept = targets[torch.arange(4000), labels]
    own_partner = kept[(kept > 0) & (kept < 1)]
    assert ((own_partner < 0.1) | (own_partner > 0.9)).float().mean() > 0.5
