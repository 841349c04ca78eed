"""Batched augmentation with kornia: float images (B, C, H, W) in [0, 1], parameters drawn per image."""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn


def build_augmentation(img_size: int, crop_padding: int, hflip: bool) -> nn.Module:
    """Random crop of `img_size` after zero padding by `crop_padding` (0: none), then a random horizontal
    flip. (B, C, H, W) -> (B, C, img_size, img_size); an identity when nothing is asked for."""
    ops: list[nn.Module] = []
    if crop_padding:
        ops.append(K.RandomCrop((img_size, img_size), padding=crop_padding))
    if hflip:
        ops.append(K.RandomHorizontalFlip())
    return nn.Sequential(*ops)
