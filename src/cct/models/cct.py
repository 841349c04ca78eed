"""The CCT family: one configurable model covering the seed Keras CCT, the paper's CCTs, ViT-Lite and CVT."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

import torch
from torch import nn

from ..errors import CCTError
from ..validation import FRACTION, POSITIVE, all_of, check_fields, instance_of, integer, number, one_of, optional
from .layers import (ConvTokenizer, Dropout, KerasEncoderBlock, PaperEncoderBlock, PatchTokenizer, SequencePooling,
                     resample_position_grid, sinusoidal_embedding)


@dataclass(frozen=True)
class CCTConfig:
    """Everything that defines a model of the family; saved beside every checkpoint.

    style "paper" is the authors' PyTorch code; "keras" is the keras.io example (pre-norm encoder,
    Keras tokenizer padding and Keras initialisers). `tokenizer` "conv" is CCT's, "patch" ViT's.
    `pooling` "sequence" is CCT's sequence pooling, "class_token" ViT's class token.
    Inputs are float images in [0, 1]; the model subtracts `mean` and divides by `std` itself.
    """

    name: str
    num_layers: int
    num_heads: int
    embed_dim: int
    mlp_ratio: float
    img_size: int = 32
    in_chans: int = 3
    num_classes: int = 10
    style: Literal["paper", "keras"] = "paper"
    tokenizer: Literal["conv", "patch"] = "conv"
    kernel_size: int = 3
    num_convs: int = 2
    patch_size: int = 4
    head_dim: int | None = None
    pooling: Literal["sequence", "class_token"] = "sequence"
    positional_embedding: Literal["learnable", "sine", "none"] = "learnable"
    dropout: float = 0.0
    attention_dropout: float = 0.1
    stochastic_depth: float = 0.1
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self):
        check_fields(self, _CONFIG_RULES, "model config")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.in_chans:
                raise CCTError(f"model config field {name}: expected {self.in_chans} value"
                               f"{'s' * (self.in_chans > 1)} (in_chans), got {list(getattr(self, name))}")
        if self.head_dim is None and self.embed_dim % self.num_heads:
            raise CCTError(f"model config field num_heads: embed_dim {self.embed_dim} does not split into {self.num_heads} "
                           "heads (give heads that divide it, or a head_dim)")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise CCTError(f"model config field mlp_ratio: {self.mlp_ratio:g} of embed_dim {self.embed_dim} leaves the "
                           f"MLP no hidden features (at least {1 / self.embed_dim:g})")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise CCTError(f"model config field class_names: expected {self.num_classes} names (num_classes) "
                           f"or none, got {len(self.class_names)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CCTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data)


_CONFIG_RULES = {  # checked whenever a model config is made
    "name": instance_of(str, "a string"),
    **dict.fromkeys(("num_layers", "num_heads", "embed_dim", "img_size", "in_chans", "num_classes", "kernel_size",
                     "num_convs", "patch_size"), integer(1)),
    "mlp_ratio": POSITIVE,
    "style": one_of("paper", "keras"),
    "tokenizer": one_of("conv", "patch"),
    "head_dim": optional(integer(1)),
    "pooling": one_of("sequence", "class_token"),
    "positional_embedding": one_of("learnable", "sine", "none"),
    "dropout": FRACTION,
    "attention_dropout": FRACTION,
    "stochastic_depth": FRACTION,
    "mean": all_of(number(-float("inf")), "[numbers, one per channel]"),
    "std": all_of(POSITIVE, "[numbers above 0, one per channel]"),
    "class_names": all_of(instance_of(str, "a string"), "[strings]"),
}


class CCT(nn.Module):
    """Image classifier: tokenizer -> (+ positions) -> encoder blocks -> norm -> pooling -> linear head.

    forward: (B, C, H, W) float in [0, 1] -> (B, num_classes) logits.
    """

    def __init__(self, config: CCTConfig):
        super().__init__()
        self.config = c = config
        self.register_buffer("mean", torch.tensor(c.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.std).view(1, -1, 1, 1), persistent=False)
        if c.tokenizer == "conv":
            self.tokenizer = ConvTokenizer(c.in_chans, c.embed_dim, c.num_convs, c.kernel_size, style=c.style)
        else:
            self.tokenizer = PatchTokenizer(c.in_chans, c.embed_dim, c.patch_size)
        with torch.no_grad():
            try:
                num_tokens = self.tokenizer(torch.zeros(1, c.in_chans, c.img_size, c.img_size)).shape[1]
            except RuntimeError:  # a kernel larger than what is left of the image
                tokenizer = (f"patches of {c.patch_size}x{c.patch_size}" if c.tokenizer == "patch" else
                             f"{c.num_convs} convolutions of kernel {c.kernel_size} and stride-2 max-pools")
                raise CCTError(f"{c.name}: a {c.img_size}x{c.img_size} image is too small for its {tokenizer}; give "
                               "larger images or a smaller tokenizer") from None
        self.class_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.pooling == "class_token" else None
        num_tokens += c.pooling == "class_token"
        self.num_tokens = num_tokens
        if c.positional_embedding == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, c.embed_dim))
        elif c.positional_embedding == "sine":
            self.register_buffer("pos_embed", sinusoidal_embedding(num_tokens, c.embed_dim)[None], persistent=False)
        else:
            self.pos_embed = None
        self.dropout = Dropout(c.dropout)
        drop_paths = torch.linspace(0, c.stochastic_depth, c.num_layers, dtype=torch.float64).tolist()
        if c.style == "keras":
            self.blocks = nn.Sequential(*(
                KerasEncoderBlock(c.embed_dim, c.num_heads, c.head_dim, c.mlp_ratio, c.dropout, c.attention_dropout, p)
                for p in drop_paths))
        else:
            self.blocks = nn.Sequential(*(
                PaperEncoderBlock(c.embed_dim, c.num_heads, c.head_dim, c.mlp_ratio, c.dropout, c.attention_dropout, p)
                for p in drop_paths))
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-5)
        self.pool = SequencePooling(c.embed_dim) if c.pooling == "sequence" else None
        self.head = nn.Linear(c.embed_dim, c.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.config.style == "keras":
            self.apply(_keras_init)
            if isinstance(self.pos_embed, nn.Parameter):
                nn.init.xavier_uniform_(self.pos_embed.data[0])
        else:
            self.apply(_paper_init)
            if isinstance(self.pos_embed, nn.Parameter):
                nn.init.trunc_normal_(self.pos_embed, std=0.2)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] (any float dtype) -> normalised encoder output (B, N, D).

        The token stream keeps the tokenizer's output dtype: the model's own, or under autocast the 16-bit
        type (the encoder then runs wholly in bf16, its LayerNorms accumulating in fp32, without a cast
        around every layer)."""
        c = self.config
        if not x.is_floating_point() or x.ndim != 4 or x.shape[1] != c.in_chans:
            got = f"{str(x.dtype).removeprefix('torch.')} {tuple(map(int, x.shape))}"  # ints while traced too
            raise CCTError(f"{c.name} takes float images (B, {c.in_chans}, H, W) in [0, 1], got {got} (uint8 images: "
                           "divide by 255, or predict through cct.Classifier)")
        if c.positional_embedding == "learnable" and x.shape[-2] != x.shape[-1]:
            raise CCTError(f"{c.name} takes square images (its learned position table is a square grid of tokens), "
                           f"got {int(x.shape[-2])}x{int(x.shape[-1])}")
        x = self.tokenizer(((x - self.mean) / self.std).to(self.mean.dtype))
        if self.class_token is not None:
            x = torch.cat([self.class_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.position_table(x.shape[1]).to(x.dtype)
        return self.norm(self.blocks(self.dropout(x)))

    def position_table(self, num_tokens: int) -> torch.Tensor:
        """The positions of `num_tokens` tokens, (1, num_tokens, D): the model's own table for images of its
        img_size; for other square images the sine table of that length, or the learned table resampled to
        the smaller or larger token grid (as progressive resizing in training needs)."""
        if num_tokens == self.pos_embed.shape[1]:
            return self.pos_embed
        if self.config.positional_embedding == "sine":
            return sinusoidal_embedding(num_tokens, self.config.embed_dim)[None].to(self.pos_embed.device)
        prefix = int(self.class_token is not None)
        table = resample_position_grid(self.pos_embed, num_tokens - prefix, prefix)
        if table is None:
            raise ValueError(f"{self.config.name} was built for {self.config.img_size}x{self.config.img_size} "
                             f"images ({self.pos_embed.shape[1]} tokens); got {num_tokens} tokens, not a square grid")
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        x = self.pool(x) if self.pool is not None else x[:, 0]
        return self.head(x)


# the fields in which a model may differ from the weights it starts from (`adapted`); the weights fix the others:
# their shapes, and what they were trained on (the input normalisation, the kind of position table, the layout)
ADAPTABLE = ("num_classes", "class_names", "img_size", "dropout", "attention_dropout", "stochastic_depth")


def adapted_config(source: CCTConfig, **changes) -> CCTConfig:
    """`source` with `changes` (None is ignored), which may only be in ADAPTABLE fields: a CCTError names every
    other field that differs. Another `num_classes` drops the class names unless new ones are given."""
    changes = {k: v for k, v in changes.items() if v is not None}
    fixed = [f"{k} is {getattr(source, k)!r} there, not {v!r}" for k, v in sorted(changes.items())
             if k not in ADAPTABLE and v != getattr(source, k)]
    if fixed:
        raise CCTError(f"pretrained weights fix the model config: {'; '.join(fixed)}")
    if changes.get("num_classes", source.num_classes) != source.num_classes:
        changes.setdefault("class_names", ())
    return replace(source, **changes)


def adapted(source: CCT, **changes) -> tuple[CCT, list[str]]:
    """A model of `adapted_config(source.config, **changes)` holding `source`'s weights (timm's way of starting
    from pretrained weights), and what it changed: a freshly initialised head where the classes differ (their
    number, or their names where both models name them), the learned position table resampled for another
    image size (`CCT.position_table`). In eval mode, on the CPU."""
    model = CCT(adapted_config(source.config, **changes))
    old, new = source.config, model.config
    state = {k: v.cpu() for k, v in source.state_dict().items()}
    changed = []
    named_apart = old.class_names and new.class_names and old.class_names != new.class_names
    if old.num_classes != new.num_classes or named_apart:
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
        changed.append(f"the head made anew ({new.num_classes} classes)")
    if isinstance(model.pos_embed, nn.Parameter) and model.num_tokens != source.num_tokens:
        with torch.no_grad():
            state["pos_embed"] = source.position_table(model.num_tokens).cpu()
        changed.append(f"the position table resampled from {source.num_tokens} to {model.num_tokens} tokens")
    model.load_state_dict(state)
    return model.eval(), changed


def _paper_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _keras_init(m: nn.Module) -> None:
    """Keras defaults: glorot_uniform dense kernels, zero biases; the tokenizer's convs use he_normal."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        std = math.sqrt(2.0 / fan_in) / 0.87962566103423978  # Keras' truncated-normal correction
        nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
