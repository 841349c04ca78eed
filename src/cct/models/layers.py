"""The building blocks of CCT, one small module per idea of the paper.

Shapes: B batch, C channels, H x W image, N tokens, D embedding width.
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def numpy_random(device: torch.device) -> bool:
    """Whether random masks come from numpy: on the CPU in eager mode (torch.compile traces torch's ops, and
    translates numpy's bit-level views wrongly)."""
    return torch.device(device).type == "cpu" and not torch.compiler.is_compiling()


_mask_seeds = threading.local()  # .generator: where this thread's numpy masks take their seeds, see `own_mask_seeds`


@contextlib.contextmanager
def own_mask_seeds(seed: int):
    """Within it, the masks this thread draws through numpy take their seeds from a generator of its own,
    seeded with `seed`, not from torch's global one, whose draws threads sharing it would take in any order
    (`cct.training.GradientStep` runs the parts of a batch in threads)."""
    _mask_seeds.generator = torch.Generator().manual_seed(seed)
    try:
        yield
    finally:
        del _mask_seeds.generator


def random_int16(n: int, device: torch.device, from_numpy: bool) -> torch.Tensor:
    """`n` uniform random 16-bit integers, four from each 64-bit random number. `from_numpy` (where
    `numpy_random`): from numpy's SFC64 generator (4x faster than torch's Mersenne Twister on the CPU), seeded
    by one draw from torch's generator (or this thread's, `own_mask_seeds`), so torch.manual_seed and torch's
    saved RNG state decide them all the same."""
    words = (n + 3) // 4
    if from_numpy:
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=getattr(_mask_seeds, "generator", None)))
        raw = np.random.Generator(np.random.SFC64(seed)).bit_generator.random_raw(words)
        return torch.from_numpy(raw.view(np.int16)[:n])
    return torch.randint(-2**63, 2**63 - 1, (words,), dtype=torch.int64, device=device).view(torch.int16)[:n]


INTEGER_OF_SIZE = {2: (torch.int16, np.int16), 4: (torch.int32, np.int32), 8: (torch.int64, np.int64)}


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A dropout mask of `shape`: 0 with probability p (rounded to a multiple of 2^-16), else 1 / (1 - p).

    From 16-bit random integers (`random_int16`): on the CPU many times faster than torch's per-element
    Bernoulli sampling, which otherwise takes a fifth of a CCT training step. On the CPU numpy writes the
    mask's bit patterns (keep * the bits of 1 / (1 - p) in `dtype`) in one pass, 7x faster than casting
    torch's boolean mask to `dtype`.
    """
    threshold = round(p * 65536) - 32768
    from_numpy = numpy_random(device)
    random = random_int16(shape.numel(), device, from_numpy)
    if not from_numpy:
        return (random >= threshold).view(shape).to(dtype).mul_(1.0 / (1.0 - p))
    scale = torch.ones((), dtype=dtype).mul_(1.0 / (1.0 - p))  # rounded as a cast-and-multiplied mask is
    integer, np_integer = INTEGER_OF_SIZE[scale.element_size()]
    mask = np.multiply(random.numpy() >= threshold, scale.view(integer).item(), dtype=np_integer)
    return torch.from_numpy(mask).view(dtype).view(shape)


class Dropout(nn.Module):
    """Zero each element with probability `p` in training, scaling the others by 1 / (1 - p): with `keep_mask`
    where its mask comes from numpy (`numpy_random`), torch's fused kernel elsewhere. (...) -> (...)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def mask_shape(self, x: torch.Tensor) -> torch.Size:
        return x.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = torch.Size(self.mask_shape(x))
        if not numpy_random(x.device) and shape == x.shape:
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(shape, self.p, x.dtype, x.device)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropPath(Dropout):
    """Stochastic depth: drop a residual branch for a whole sample with probability `p`.

    (B, ...) -> (B, ...); identity in eval mode or when p == 0.
    """

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[0],) + (1,) * (x.ndim - 1)


class KerasPaddedMaxPool(nn.Module):
    """Keras' ZeroPadding2D(`zero_padding`) then MaxPooling2D(3, strides=2, padding="same"), as seen through
    the ReLU that follows it in the tokenizer.

    Keras' "same" pooling adds -inf rows/columns: one at the bottom/right of an even-sized map, one on each
    side of an odd-sized one. With a zero border of 1 around an even-sized map, the windows are those of
    pooling the unpadded map with padding 1 in ceil mode; a zero in a window only changes a maximum that is
    negative, which the ReLU turns into 0 either way (relu(max(S + {0})) = relu(max(S))), so that case skips
    the padded copy. Other sizes pad explicitly.

    (B, C, H, W) -> (B, C, ceil(H' / 2), ceil(W' / 2)) with H' = H + 2 * zero_padding.
    """

    def __init__(self, zero_padding: int = 1):
        super().__init__()
        self.zero_padding = zero_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.zero_padding == 1 and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
            return F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True)
        x = F.pad(x, (self.zero_padding,) * 4)
        return F.max_pool2d(x, 3, 2, padding=(x.shape[-2] % 2, x.shape[-1] % 2), ceil_mode=True)


class ConvTokenizer(nn.Module):
    """CCT's convolutional tokenizer: `num_convs` stages of conv -> ReLU -> max-pool(3, stride 2).

    Max-pooling and ReLU commute (both are monotone), so each stage pools first and applies the ReLU to a
    quarter of the values: the same outputs and gradients, less work.
    Intermediate stages have `hidden_channels`, the last one `embed_dim`; no conv bias.
    style "paper": conv(kernel k, stride max(1, k // 2 - 1), padding max(1, k // 2)), MaxPool(3, 2, padding 1).
    style "keras": conv(kernel k, stride 1, "valid"), ZeroPadding(k // 2), MaxPool(3, 2, "same"), the last two
    as one `KerasPaddedMaxPool`.

    (B, C, H, W) -> (B, N, D), N = the number of positions left after the last pooling.
    """

    def __init__(self, in_chans: int, embed_dim: int, num_convs: int, kernel_size: int,
                 hidden_channels: int = 64, style: str = "paper"):
        super().__init__()
        channels = [in_chans] + [hidden_channels] * (num_convs - 1) + [embed_dim]
        stages = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            if style == "keras":
                stage = [nn.Conv2d(c_in, c_out, kernel_size, stride=1, padding=0, bias=False),
                         KerasPaddedMaxPool(kernel_size // 2), nn.ReLU()]
            else:
                stride, padding = max(1, kernel_size // 2 - 1), max(1, kernel_size // 2)
                stage = [nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
                         nn.MaxPool2d(3, stride=2, padding=1), nn.ReLU()]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x).flatten(2).transpose(1, 2)


class PatchTokenizer(nn.Module):
    """ViT's patch embedding: one conv with kernel = stride = `patch_size` (with bias).

    (B, C, H, W) -> (B, (H / p) * (W / p), D).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def sinusoidal_embedding(num_tokens: int, dim: int) -> torch.Tensor:
    """The fixed sine/cosine position table of "Attention is all you need": (num_tokens, dim)."""
    position = torch.arange(num_tokens, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2) / dim
    table = position / (10000 ** exponent)[None, :]
    table[:, 0::2] = table[:, 0::2].sin()
    table[:, 1::2] = table[:, 1::2].cos()
    return table.float()


def resample_position_grid(table: torch.Tensor, num_tokens: int, prefix: int = 0) -> torch.Tensor | None:
    """A learned position table (1, prefix + S * S, D) for a square S x S token grid, resampled (bicubic, with
    antialiasing when shrinking, as timm does) to (1, prefix + num_tokens, D) for a square grid of `num_tokens`
    tokens; the first `prefix` rows (a class token's) are kept. None when either grid is not square."""
    side, new_side = math.isqrt(table.shape[1] - prefix), math.isqrt(num_tokens)
    if side * side != table.shape[1] - prefix or new_side * new_side != num_tokens:
        return None
    grid = table[:, prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()  # no bf16 antialiasing on the CPU
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", antialias=new_side < side, align_corners=False)
    return torch.cat([table[:, :prefix], grid.flatten(2).transpose(1, 2).to(table.dtype)], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention.

    `head_dim` defaults to dim / num_heads (the paper); Keras' MultiHeadAttention(key_dim=k) sets it to k,
    whatever `dim` is. Query, key and value are separate projections (as in Keras, whose (dim, heads,
    head_dim) kernels map onto them one to one; the authors' fused qkv weight is their concatenation):
    separate, their gradients need no stacking, which makes a CPU training step faster.

    `fold` (set by `Runtime.prepare` where `fold_saves_work`): compute the same function and gradients through
    `folded`, which multiplies weights instead of activations.

    (B, N, D) -> (B, N, D).
    """

    fold = False
    # training on the CPU computes attention a few images at a time, each chunk's (H, N, N) scores within this
    # many bytes, so its softmax and dropout passes stay in the caches (cct_7_3x1_32's attention 1.4x faster)
    CPU_SCORES_BYTES = 4 << 20

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, qkv_bias: bool = False,
                 attention_dropout: float = 0.0, projection_dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.query = nn.Linear(dim, inner, bias=qkv_bias)
        self.key = nn.Linear(dim, inner, bias=qkv_bias)
        self.value = nn.Linear(dim, inner, bias=qkv_bias)
        self.attn_drop = Dropout(attention_dropout)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = Dropout(projection_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        # cast once for the three projections, not in each (a CCT's stream is already 16-bit under autocast
        # on the CPU; CUDA's autocast hands LayerNorm outputs over in fp32)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.fold:
            weights = self.folded_weights()
            return self.proj_drop(self.in_chunks(lambda x: self.folded(x, *weights), x))
        q, k, v = (proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        if x.device.type == "cpu" and (self.training or N <= 64):
            # SDPA's math, with the faster dropout mask. On the CPU, training through SDPA's fused kernel is
            # slower, and so is its inference on short sequences (64 tokens: 1.6x, 256: 0.65x).
            x = self.in_chunks(self.attend, q, k, v)
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)))

    def in_chunks(self, fn, *inputs: torch.Tensor) -> torch.Tensor:
        """fn(*inputs), inputs (B, ..., N, C) with N tokens; when training on the CPU, a few images at a time,
        each chunk's (H, N, N) scores within CPU_SCORES_BYTES, and the chunks' outputs concatenated."""
        x = inputs[0]
        if not self.training or x.device.type != "cpu":
            return fn(*inputs)
        images = max(1, self.CPU_SCORES_BYTES // (self.num_heads * x.shape[-2] ** 2 * x.element_size()))
        if len(x) <= images:
            return fn(*inputs)
        return torch.cat([fn(*chunk) for chunk in zip(*(t.split(images) for t in inputs))])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v with attention dropout, the scale applied to q (N / d times fewer
        multiplies than to the scores). (B, H, N, d) each -> (B, H, N, d)."""
        return self.attn_drop(((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v

    @property
    def fold_saves_work(self) -> bool:
        """Whether `folded` takes fewer multiply-adds: per token and head it trades the four projections
        (4 D d) for two D x D products (2 D^2) and the token products' width d for D, so it does when
        d >= D (Keras' key_dim 128 on a width of 128: 40% fewer in the seed model's attention)."""
        return self.head_dim >= self.query.in_features

    def folded_weights(self) -> tuple:
        """The weight products of `folded` (W_h: head h's rows of a projection's weight, b_h its bias):
        Wk_h^T Wq_h and bq_h Wk_h (the query scaled by 1 / sqrt(d)), Wo_h Wv_h and Wo_h bv_h, and the key
        bias's terms, or None where its gradient is not needed. Computed once a forward pass, for all its chunks,
        in the weights' precision."""
        D, H, d = self.query.in_features, self.num_heads, self.head_dim
        with torch.autocast(self.query.weight.device.type, enabled=False):
            wq = self.query.weight.view(H, d, D) * d ** -0.5  # the scores' scale, folded in
            bq = None if self.query.bias is None else self.query.bias.view(H, 1, d) * d ** -0.5
            wk, bk = self.key.weight.view(H, d, D), self.key.bias
            wv, bv = self.value.weight.view(H, d, D), self.value.bias
            wo = self.proj.weight.view(D, H, d).transpose(0, 1)  # (H, D, d)
            query_key = (wk.transpose(1, 2) @ wq).flatten(0, 1), None if bq is None else (bq @ wk).flatten()
            value_out = (wo @ wv).flatten(0, 1), None if bv is None else (wo @ bv.view(H, d, 1)).flatten()
            needs_shift = bk is not None and bk.requires_grad and torch.is_grad_enabled()
            shift = None if not needs_shift else (
                (bk.view(H, 1, d) @ wq).view(H, D), None if bq is None else (bq.view(H, d) * bk.view(H, d)).sum(-1))
        return query_key, value_out, shift

    def folded(self, x: torch.Tensor, query_key: tuple, value_out: tuple, shift: tuple | None) -> torch.Tensor:
        """The attention before `proj_drop`, through the `folded_weights` (rows are tokens):

            q_h k_h^T = (x (Wk_h^T Wq_h)^T + bq_h Wk_h) x^T + (x (bk_h Wq_h)^T + bq_h . bk_h)  (Wq, bq scaled)
            out = sum_h A_h (x (Wo_h Wv_h)^T + bv_h Wo_h^T) + bo

        Equal to the unfolded computation in exact arithmetic, as the gradients of every weight are. The last
        term of the scores is the same for every key, so softmax cancels it; it is computed only where the key
        bias needs its gradient (zero up to rounding, as in the unfolded model).

        (B, N, D) -> (B, N, D).
        """
        B, N, D = x.shape
        H = self.num_heads
        # rows (token, head): (B, N * H, D) is a view of the (B, N, H * D) output
        query_key = F.linear(x, *query_key).view(B, N * H, D)
        scores = query_key @ x.transpose(1, 2) if shift is None else \
            torch.baddbmm(F.linear(x, *shift).view(B, N * H, 1), query_key, x.transpose(1, 2))
        weights = self.attn_drop(scores.softmax(dim=-1))
        # the sum over heads and keys as one product: (B, N, [key, head]) @ (B, [key, head], D)
        value_out = F.linear(x, *value_out).view(B, N * H, D)
        x = weights.view(B, N, H, N).transpose(2, 3).reshape(B, N, N * H) @ value_out
        return x + self.proj.bias.to(x.dtype)


class PaperEncoderBlock(nn.Module):
    """The CCT authors' encoder layer. It differs from a pre-norm transformer: the stream is normalised
    *after* the attention residual, and the MLP has no norm of its own.

        x = norm1(x + drop_path(attn(pre_norm(x))))
        x = x + drop_path(dropout(fc2(dropout(gelu(fc1(x))))))

    (B, N, D) -> (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None, mlp_ratio: float, dropout: float,
                 attention_dropout: float, drop_path: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.pre_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, head_dim, attention_dropout=attention_dropout, projection_dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_path(self.attn(self.pre_norm(x))))
        return x + self.drop_path(self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x))))))


class KerasEncoderBlock(nn.Module):
    """The keras.io CCT encoder layer: pre-norm on both branches, q/k/v with bias and a per-head width
    of its own, and GELU after *both* MLP layers, each followed by dropout.

        x = x + drop_path(attn(norm1(x)))
        x = x + drop_path(dropout(gelu(fc2(dropout(gelu(fc1(norm2(x))))))))

    (B, N, D) -> (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None, mlp_ratio: float, dropout: float,
                 attention_dropout: float, drop_path: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, num_heads, head_dim=head_dim, qkv_bias=True, attention_dropout=attention_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        mlp = self.dropout(F.gelu(self.fc2(self.dropout(F.gelu(self.fc1(self.norm2(x)))))))
        return x + self.drop_path(mlp)


class SequencePooling(nn.Module):
    """CCT's sequence pooling: a softmax over tokens of a learned score, then the weighted sum of tokens.

    (B, N, D) -> pooled (B, D); `weights(x)` gives the (B, N) token weights.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x).squeeze(-1).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bn,bnd->bd", self.weights(x), x)
