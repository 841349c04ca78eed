"""Import the weights of the keras.io CCT (the seed model) into `cct_keras`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from .errors import CCTError
from .models import CCT, create_model

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def state_dict_from_keras_weights(model: CCT, weights: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Map the seed Keras model's weights, in `keras_model.trainable_weights` order, onto `model`'s parameters.

    Keras order: the tokenizer's conv kernels, the position table, then per layer LayerNorm (gamma, beta),
    MultiHeadAttention (query, key, value kernels and biases, output kernel and bias), LayerNorm, the two
    MLP Dense layers; the final LayerNorm, the sequence-pooling Dense and the classifier Dense.
    Layouts: Conv2D (kh, kw, in, out) -> (out, in, kh, kw); Dense (in, out) -> (out, in);
    attention (dim, heads, head_dim) -> (heads * head_dim, dim); output (heads, head_dim, dim) -> (dim, ...).
    """
    arrays = iter(weights)

    def take(name: str, convert=lambda a: a) -> tuple[str, torch.Tensor]:
        array = np.asarray(next(arrays))
        return name, torch.from_numpy(np.ascontiguousarray(convert(array))).float()

    conv = lambda a: a.transpose(3, 2, 0, 1)  # noqa: E731
    dense = lambda a: a.T  # noqa: E731
    heads_in = lambda a: a.reshape(a.shape[0], -1).T  # noqa: E731
    heads_out = lambda a: a.reshape(-1, a.shape[-1]).T  # noqa: E731
    flat = lambda a: a.reshape(-1)  # noqa: E731

    pairs = [take(f"tokenizer.stages.{i}.0.weight", conv) for i in range(len(model.tokenizer.stages))]
    pairs.append(take("pos_embed", lambda a: a[None]))
    for i in range(len(model.blocks)):
        b = f"blocks.{i}."
        pairs += [take(b + "norm1.weight"), take(b + "norm1.bias")]
        for projection in ("query", "key", "value"):
            pairs += [take(f"{b}attn.{projection}.weight", heads_in), take(f"{b}attn.{projection}.bias", flat)]
        pairs += [take(b + "attn.proj.weight", heads_out), take(b + "attn.proj.bias")]
        pairs += [take(b + "norm2.weight"), take(b + "norm2.bias")]
        pairs += [take(b + "fc1.weight", dense), take(b + "fc1.bias"), take(b + "fc2.weight", dense), take(b + "fc2.bias")]
    pairs += [take("norm.weight"), take("norm.bias"), take("pool.score.weight", dense), take("pool.score.bias"),
              take("head.weight", dense), take("head.bias")]
    if next(arrays, None) is not None:
        raise ValueError("the Keras model has more weights than cct_keras")
    return dict(pairs)


def convert_keras(path: str | Path, class_names: tuple[str, ...] = CIFAR10_CLASSES) -> CCT:
    """A `cct_keras` model holding the weights of a saved seed Keras model (.keras, .weights.h5 or .h5),
    read by Keras 3 into the reference model (needs `keras`; its backend is torch unless KERAS_BACKEND names one or
    TensorFlow is installed)."""
    path = Path(path)
    if not path.is_file():
        raise CCTError(f"{path}: no such file")
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("tensorflow") is None:
        os.environ["KERAS_BACKEND"] = "torch"  # Keras 3 falls back to TensorFlow; torch is installed with cct
    try:
        from keras import ops

        from .keras_reference import build_keras_cct
    except ImportError as e:
        raise CCTError(f"converting Keras weights needs keras (pip install keras): {e}") from e
    keras_model = build_keras_cct(num_classes=len(class_names))
    try:
        keras_model.load_weights(path)
    except Exception as e:  # Keras raises many types for a file that is not the seed model's weights
        raise CCTError(f"{path}: not the weights of the seed Keras CCT ({str(e).splitlines()[0]})") from e
    model = create_model("cct_keras", num_classes=len(class_names), class_names=class_names)
    weights = [ops.convert_to_numpy(w) for w in keras_model.trainable_weights]
    model.load_state_dict(state_dict_from_keras_weights(model, weights))
    return model.eval()
