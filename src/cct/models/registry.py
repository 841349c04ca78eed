"""Named model variants, looked up like timm's `create_model`.

Names follow the authors': cct_{layers}_{kernel}x{convs}_{resolution}, vit_lite_{layers}_{patch}_{resolution},
cvt_{layers}_{patch}_{resolution}; a `_sine` suffix swaps the learnable position table for a sinusoidal one.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import fields, replace

import torch

from ..errors import CCTError
from ..pretrained import BUNDLED
from ..validation import did_you_mean
from .cct import CCT, CCTConfig, adapted

_MODELS: dict[str, CCTConfig] = {}
_ALIASES: dict[str, str] = {}

# size: (layers, heads, dim, mlp ratio), the paper's table
_SIZES = {2: (2, 2, 128, 1.0), 4: (4, 2, 128, 1.0), 6: (6, 4, 256, 2.0), 7: (7, 4, 256, 2.0), 14: (14, 6, 384, 3.0)}
KERAS_MEAN, KERAS_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
LUMA = (0.299, 0.587, 0.114)  # PIL's RGB -> L (ITU-R 601-2), how images are read for in_chans=1
TIMM_FIELDS = {"drop_rate": "dropout", "attn_drop_rate": "attention_dropout", "drop_path_rate": "stochastic_depth"}


def register(config: CCTConfig, *aliases: str) -> None:
    _MODELS[config.name] = config
    for alias in aliases:
        _ALIASES[alias] = config.name


def _register_family() -> None:
    register(CCTConfig("cct_2_3x2_32_keras", num_layers=2, num_heads=2, embed_dim=128, mlp_ratio=1.0, style="keras",
                       head_dim=128, dropout=0.1, mean=KERAS_MEAN, std=KERAS_STD), "cct_keras")
    cct_variants = [(2, 3, 2, 32), (4, 3, 2, 32), (6, 3, 1, 32), (6, 3, 2, 32), (7, 3, 1, 32), (7, 3, 2, 32),
                    (7, 7, 2, 224), (14, 7, 2, 224)]
    for size, kernel, convs, res in cct_variants:
        layers, heads, dim, mlp = _SIZES[size]
        config = CCTConfig(f"cct_{size}_{kernel}x{convs}_{res}", layers, heads, dim, mlp, img_size=res,
                           kernel_size=kernel, num_convs=convs, num_classes=10 if res == 32 else 1000)
        register(config)
        register(replace(config, name=config.name + "_sine", positional_embedding="sine"))
    for size in (6, 7):
        layers, heads, dim, mlp = _SIZES[size]
        for prefix, pooling in (("vit_lite", "class_token"), ("cvt", "sequence")):
            register(CCTConfig(f"{prefix}_{size}_4_32", layers, heads, dim, mlp, tokenizer="patch", patch_size=4,
                               pooling=pooling))


def list_models(pattern: str = "*", *, pretrained: bool = False, include_aliases: bool = False) -> list[str]:
    """Registered names (and aliases, if asked) matching a shell-style pattern, in natural order (cct_2 before
    cct_14, as timm sorts); with `pretrained`, as in timm, only those with bundled weights."""
    names = [*_MODELS, *(_ALIASES if include_aliases else ())]
    bundled = {w.model for w in BUNDLED}
    return sorted((n for n in names if fnmatch.fnmatch(n, pattern) and (not pretrained or
                                                                        _ALIASES.get(n, n) in bundled)),
                  key=lambda name: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)])


def model_config(name: str, **overrides) -> CCTConfig:
    """The registered config of `name` (or an alias), with fields replaced by `overrides` (None is ignored).
    With in_chans=1 and no mean or std given, those of the gray image are taken: the luma of the RGB ones (the
    mean exactly, the std as if the channels were fully correlated, nearly so in photos)."""
    canonical = _ALIASES.get(name, name)
    if canonical not in _MODELS:
        hint = did_you_mean([name], list_models(include_aliases=True), n=5)
        raise CCTError(f"unknown model '{name}' (see `cct models`){hint}")
    known = sorted(f.name for f in fields(CCTConfig))
    for key in overrides:
        if key not in known:
            hint = f"; timm's name for {TIMM_FIELDS[key]}" if key in TIMM_FIELDS else did_you_mean([key], known)
            raise CCTError(f"unknown model config field '{key}'{hint} (fields: {', '.join(known)})")
    config = _MODELS[canonical]
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("in_chans") == 1 and config.in_chans == 3:
        for key in ("mean", "std"):
            given.setdefault(key, (round(sum(w * v for w, v in zip(LUMA, getattr(config, key))), 4),))
    return replace(config, **given)


def create_model(name: str, num_classes: int | None = None, img_size: int | None = None,
                 positional_embedding: str | None = None, pretrained: str | bool | None = None, **overrides) -> CCT:
    """Build a model by name, e.g. `create_model("cct_7_3x1_32", num_classes=100)`: freshly initialised, or
    starting from the weights bundled for dataset `pretrained` (`create_model("cct_keras", pretrained="cifar10")`;
    True: CIFAR-10's, as timm's `pretrained=True` takes a model's default weights), in eval mode. As in timm,
    another `num_classes` gives the pretrained model a new head, another `img_size` a resampled position table
    (`adapted`); the other fields must agree with the weights."""
    if not pretrained:
        return CCT(model_config(name, num_classes=num_classes, img_size=img_size,
                                positional_embedding=positional_embedding, **overrides))
    from ..pretrained import pretrained_path
    from ..training.checkpoint import load_checkpoint

    given = dict(num_classes=num_classes, img_size=img_size, positional_embedding=positional_embedding, **overrides)
    model_config(name, **given)  # unknown fields and bad values first
    source = load_checkpoint(pretrained_path(name) if pretrained is True else pretrained_path(name, pretrained))[0]
    return adapted(source, **given)[0]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: CCT, include_attention: bool = False) -> int:
    """Multiply-accumulates of one forward pass on one image in its convolutions and linear layers, counted
    by torch's FLOP counter, as the paper's table counts them. `include_attention` adds attention's
    token-token products (2 N^2 x heads x head_dim per block)."""
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    x = torch.zeros(1, c.in_chans, c.img_size, c.img_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    aten = torch.ops.aten
    counts = counter.get_flop_counts()["Global"]
    macs = sum(counts.get(op, 0) for op in (aten.convolution, aten.addmm, aten.mm)) // 2
    if include_attention:
        macs += sum(2 * model.num_tokens ** 2 * b.attn.num_heads * b.attn.head_dim for b in model.blocks)
    return macs


_register_family()
