"""Batched augmentation with kornia on float images (B, C, H, W) in [0, 1], every random choice drawn per image.

kornia's AutoAugment draws one sub-policy per batch and its RandAugment one set of operations per batch;
`PerImagePolicy` and `PerImageRandAugment` draw per image instead, as the papers (and timm) do, by running each
group of images that drew the same operations through them together."""

from __future__ import annotations

import kornia
import kornia.augmentation as K
import torch
from kornia.augmentation.auto import AutoAugment, RandAugment
from torch import nn

from ..errors import CCTError


def require_policies(what: str) -> None:
    """Refuse AutoAugment and RandAugment (`what` names the one asked for) under kornia < 0.9: 0.8.2, the last
    release for Python 3.10, zeroes half of their rotations, shears and translations instead of negating them,
    and posterizes to 0-4 bits instead of 4-8."""
    version = kornia.__version__
    if tuple(int(part) for part in version.split(".")[:2]) < (0, 9):
        raise CCTError(f"{what}: needs kornia >= 0.9 (on Python >= 3.11); kornia {version}, installed here, zeroes "
                       "half of the policies' rotations, shears and translations")


def _by_group(images: torch.Tensor, drawn: torch.Tensor, transform) -> torch.Tensor:
    """Replace, in place, each group of `images` that drew the same choice k (`drawn`: (B,) on the CPU) by
    `transform(k, rows, group)`; returns `images`."""
    for k in drawn.unique().tolist():
        rows = (drawn == k).nonzero().squeeze(1)
        on_device = rows.to(images.device)
        images[on_device] = transform(k, rows, images[on_device])
    return images


class OnRGB(nn.Module):
    """`op`, made for RGB images (kornia's AutoAugment and RandAugment refuse others), on grayscale images too:
    (B, 1, H, W) runs as RGB with three equal channels, which every one of their operations keeps equal
    (tests/data/test_augment.py), and one of them comes back. (B, C, H, W) -> (B, C, H, W), C 1 or 3."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != 1:
            return self.op(images)
        return self.op(images.expand(-1, 3, -1, -1))[:, :1]


class PerImagePolicy(nn.Module):
    """AutoAugment (CIFAR-10 policy by default) with one of its sub-policies drawn for each image.

    Each stage of the sub-policies (their first operations, then their second) runs each kind of operation once, on
    all the images whose sub-policy has it there, with the parameters each sub-policy's own operation draws for its
    images: kornia's cost per call, not per image, was most of the time (29 against 16 ms for 128 images on one
    thread when each sub-policy ran apart). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, policy: str = "cifar10"):
        super().__init__()
        require_policies("AutoAugment")
        self.subpolicies = nn.ModuleList(AutoAugment(policy).children())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        drawn = torch.randint(len(self.subpolicies), (len(images),))
        rows = {k: (drawn == k).nonzero().squeeze(1) for k in drawn.unique().tolist()}
        out = images.clone()
        for stage in zip(*(subpolicy.children() for subpolicy in self.subpolicies)):
            kinds: dict[type, list[int]] = {}
            for k in rows:
                kinds.setdefault(type(stage[k]), []).append(k)
            for members in kinds.values():
                params = [stage[k].forward_parameters(torch.Size((len(rows[k]), *images.shape[1:]))) for k in members]
                merged = {key: torch.cat([p[key] for p in params]) for key in params[0]}
                together = torch.cat([rows[k] for k in members]).to(images.device)
                group = out[together]
                merged["forward_input_shape"] = torch.tensor(group.shape)
                out[together] = stage[members[0]](group, params=merged)
        return out


class PerImageRandAugment(nn.Module):
    """RandAugment: `num_ops` rounds, each applying one operation drawn per image, at magnitude `magnitude`
    (of 30) plus Gaussian noise of std `magnitude_std` drawn per image and clipped to [0, 30] (timm's
    "rand-m9-mstd0.5" is magnitude 9, std 0.5). Operations and their magnitude ranges are kornia's.
    (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.0):
        super().__init__()
        require_policies("RandAugment")
        self.ops = nn.ModuleList(subpolicy[0] for subpolicy in RandAugment(1, 1).children())
        self.num_ops, self.magnitude, self.magnitude_std = num_ops, magnitude, magnitude_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        for _ in range(self.num_ops):
            drawn = torch.randint(len(self.ops), (len(images),))
            level = (self.magnitude + self.magnitude_std * torch.randn(len(images))).clamp(0, 30) / 30
            out = _by_group(out, drawn, lambda k, rows, group: self._apply(self.ops[k], group, level[rows]))
        return out

    @staticmethod
    def _apply(op: nn.Module, images: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """One kornia operation with a magnitude per image, mapped onto its range as kornia's RandAugment
        maps its single magnitude."""
        magnitude = None
        if op.magnitude_range is not None:
            low, high = (float(v) for v in op.magnitude_range)
            magnitude = (1 - level if op._factor_name == "bits_factor" else level) * (high - low) + low
            if op._factor_name in ("translate_x", "translate_y"):  # fractions of the size, in pixels
                magnitude = magnitude * images.shape[-1 if op._factor_name == "translate_x" else -2]
        return op(images, params=op.forward_parameters(images.shape, mag=magnitude))


def build_augmentation(img_size: int, crop_padding: int = 0, hflip: bool = False,
                       resized_crop_scale: tuple[float, float] | None = None, auto_augment: bool = False,
                       rand_augment: tuple[int, float, float] | None = None,
                       random_erasing: float = 0.0) -> nn.Module:
    """The image part of a recipe, in timm's order: a random crop of `img_size` after zero padding by
    `crop_padding` (0: none) or a RandomResizedCrop of area `resized_crop_scale`, a horizontal flip, AutoAugment
    (CIFAR-10 policy) or RandAugment (num_ops, magnitude, magnitude_std), then random erasing with probability
    `random_erasing`. (B, C, H, W) -> (B, C, img_size, img_size); an identity when nothing is asked for."""
    ops: list[nn.Module] = []
    if resized_crop_scale:
        ops.append(K.RandomResizedCrop((img_size, img_size), scale=tuple(resized_crop_scale)))
    elif crop_padding:
        ops.append(K.RandomCrop((img_size, img_size), padding=crop_padding))
    if hflip:
        ops.append(K.RandomHorizontalFlip())
    if auto_augment:
        ops.append(OnRGB(PerImagePolicy("cifar10")))
    if rand_augment:
        ops.append(OnRGB(PerImageRandAugment(*rand_augment)))
    if random_erasing:
        ops.append(K.RandomErasing(p=random_erasing))
    return nn.Sequential(*ops)


class MixUpCutMix(nn.Module):
    """MixUp (lambda ~ Beta(mixup_alpha, mixup_alpha) per image) and CutMix (box area ~ Beta(cutmix_alpha,
    cutmix_alpha) per image), each image mixed with a partner from a random pairing of the batch. With both
    on, each batch is CutMix with probability `switch_prob`, else MixUp (timm's batch mode).
    (images (B, C, H, W), labels (B,)) -> (mixed images, soft targets (B, num_classes))."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5):
        super().__init__()
        self.num_classes, self.mixup_alpha, self.switch_prob = num_classes, mixup_alpha, switch_prob
        self.cutmix = (K.RandomCutMixV2(beta=cutmix_alpha, use_correct_lambda=True, data_keys=["input", "class"])
                       if cutmix_alpha else None)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        use_cutmix = self.cutmix is not None and (not self.mixup_alpha or torch.rand(()) < self.switch_prob)
        if use_cutmix:
            images, mix = self.cutmix(images, labels)
            own, partner, kept = mix[0].unbind(1)  # kornia's CutMix lambda: the area kept from the image itself
        else:
            kept = torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample((len(images),))
            pairing = torch.randperm(len(images)).to(images.device)
            weight = kept.to(images.device, images.dtype).view(-1, 1, 1, 1)
            images = weight * images + (1 - weight) * images[pairing]
            own, partner = labels, labels[pairing]
        kept = kept.to(images.device, images.dtype)[:, None]
        return images, (kept * nn.functional.one_hot(own.long(), self.num_classes)
                        + (1 - kept) * nn.functional.one_hot(partner.long(), self.num_classes))
