"""Logits of a model over a batch of images; metrics from logits: top-1, top-5, per-class accuracy and the
confusion matrix."""

import pytest
import torch

import cct
from cct.evaluation import class_accuracy, metrics_from_logits, predict_logits
from cct.runtime import Runtime


def test_metrics_count_each_class_and_leave_a_class_without_images_unscored():
    # six classes; class 2 has no images here (a limited test set), class 5 is only ever predicted
    logits = torch.tensor([[9., 1, 0, 0, 0, 8], [9., 8, 0, 0, 0, 0], [0., 9, 0, 0, 0, 0], [8., 0, 0, 9, 1, 1],
                           [1., 1, 1, 9, -1, 1], [0., 0, 0, 0, 1, 9]])
    labels = torch.tensor([0, 1, 1, 3, 4, 4])
    m = metrics_from_logits(logits, labels, 6)
    assert m.top1 == 3 / 6 and m.top5 == 5 / 6  # exactly: evaluate --json and test.json print them
    assert m.per_class == [1.0, 0.5, None, 1.0, 0.0, None]
    assert m.confusion.tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0] * 6, [0, 0, 0, 1, 0, 0],
                                    [0, 0, 0, 1, 0, 1], [0] * 6]
    assert [class_accuracy(a) for a in m.per_class[:3]] == ["100.00%", "50.00%", "no images"]


@pytest.mark.parametrize("fused", [False, True])
def test_no_images_get_no_logits(fused):
    # torch.cat raised "expected a non-empty list of Tensors"
    runtime = Runtime(device="cpu", precision="fp32").resolve()
    model = cct.create_model("cct_2_3x2_32", num_classes=7).eval()
    forward = runtime.prepare(model, frozen=True) if fused else model
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert predict_logits(forward, images[:0], runtime=runtime, tta_flip=True).shape == (0, 7)
    assert torch.allclose(predict_logits(forward, images, runtime=runtime), model(images / 255), atol=1e-5)
