"""Metrics from logits: top-1, top-5, per-class accuracy and the confusion matrix."""

import pytest
import torch

from cct.evaluation import class_accuracy, metrics_from_logits


def test_metrics_count_each_class_and_leave_a_class_without_images_unscored():
    # six classes; class 2 has no images here (a limited test set), class 5 is only ever predicted
    logits = torch.tensor([[9., 1, 0, 0, 0, 8], [9., 8, 0, 0, 0, 0], [0., 9, 0, 0, 0, 0], [8., 0, 0, 9, 1, 1],
                           [1., 1, 1, 9, -1, 1], [0., 0, 0, 0, 1, 9]])
    labels = torch.tensor([0, 1, 1, 3, 4, 4])
    m = metrics_from_logits(logits, labels, 6)
    assert m.top1 == pytest.approx(3 / 6) and m.top5 == pytest.approx(5 / 6)
    assert m.per_class == [1.0, 0.5, None, 1.0, 0.0, None]
    assert m.confusion.tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0] * 6, [0, 0, 0, 1, 0, 0],
                                    [0, 0, 0, 1, 0, 1], [0] * 6]
    assert [class_accuracy(a) for a in m.per_class[:3]] == ["100.00%", "50.00%", "no images"]
