"""What a CCT looks at: the sequence-pooling weight of each token, drawn over the image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import tensor_to_image
from .errors import CCTError
from .inference import Classifier, ImageLike


@torch.inference_mode()
def pooling_map(classifier: Classifier, image: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(the image as the model saw it, (C, S, S) uint8; its token weights as a (h, w) grid summing to 1)."""
    model = classifier.model
    if model.pool is None:
        raise CCTError(f"{model.config.name} pools with a class token: it has no sequence-pooling weights to show")
    images, _ = classifier.to_batch([image])
    device = next(model.parameters()).device
    weights = model.pool.weights(model.tokens(images.to(device).float() / 255))[0].float().cpu()
    side = math.isqrt(weights.numel())
    return images[0], weights.view(side, side)


def explain(classifier: Classifier, image: ImageLike, out: str | Path) -> Path:
    """Write a PNG: the image, and the pooling weights over it, titled with the top prediction."""
    from .plots import plot_attention

    seen, weights = pooling_map(classifier, image)
    prediction = classifier.predict(seen, top_k=1)
    size = seen.shape[-1]
    heat = F.interpolate(weights[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    title = f"{prediction.labels[0]} {prediction.probabilities[0]:.1%}"
    plot_attention(np.asarray(tensor_to_image(seen).convert("RGB")), heat.numpy(), weights.shape, title, Path(out))
    return Path(out)
