import torch
from PIL import Image

from cct.plots import plot_confusion_matrix


def test_a_confusion_matrix_of_many_classes_keeps_a_screens_size(tmp_path):
    # its figure grew half an inch a class: 200 classes drew 12,120 px square in 4.6 GB, 1,000 would exhaust memory
    for n in (10, 1000):
        confusion = torch.eye(n, dtype=torch.int64) * 3 + (torch.arange(n)[:, None] == (torch.arange(n) + 1) % n)
        plot_confusion_matrix(confusion, [f"class {i}" for i in range(n)], tmp_path / f"{n}.png", f"{n} classes")
        with Image.open(tmp_path / f"{n}.png") as image:
            assert image.format == "PNG" and 700 <= image.width <= 1400 and 600 <= image.height <= 1300, image.size
