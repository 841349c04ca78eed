"""Prediction on image files with a trained model, converted exactly as training data was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data import load_image
from .evaluation import predict_logits
from .models import CCT


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first."""

    labels: list[str]
    probabilities: list[float]


def class_names(model: CCT) -> list[str]:
    names = list(model.config.class_names)
    return names if len(names) == model.config.num_classes else [str(i) for i in range(model.config.num_classes)]


def predict_images(model: CCT, images: torch.Tensor, top_k: int = 5) -> list[Prediction]:
    """uint8 images (N, 3, H, W) at the model's size -> the top-k classes of each."""
    probabilities = predict_logits(model, images).softmax(dim=1)
    top = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
    names = class_names(model)
    return [Prediction([names[i] for i in idx.tolist()], p.tolist()) for p, idx in zip(top.values, top.indices)]


def predict_files(model: CCT, paths: list[str | Path], top_k: int = 5) -> list[Prediction]:
    """Image files of any size or mode -> the top-k classes of each (an unreadable file raises CCTError)."""
    images = torch.stack([load_image(p, model.config.img_size) for p in paths])
    return predict_images(model, images, top_k)
