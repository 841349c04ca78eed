import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import cct
from cct.plots import (CJK_FONTS, font_families, plot_architecture, plot_attention, plot_confusion_matrix,
                       plot_training_curves)


def test_a_confusion_matrix_of_many_classes_keeps_a_screens_size(tmp_path):
    # its figure grew half an inch a class: 200 classes drew 12,120 px square in 4.6 GB, 1,000 would exhaust memory
    for n in (10, 1000):
        confusion = torch.eye(n, dtype=torch.int64) * 3 + (torch.arange(n)[:, None] == (torch.arange(n) + 1) % n)
        plot_confusion_matrix(confusion, [f"class {i}" for i in range(n)], tmp_path / f"{n}.png", f"{n} classes")
        with Image.open(tmp_path / f"{n}.png") as image:
            assert image.format == "PNG" and 700 <= image.width <= 1400 and 600 <= image.height <= 1300, image.size


def test_drawing_figures_leaves_the_users_matplotlib_backend_alone(tmp_path):
    # importing the training loop switched matplotlib to Agg: a notebook's plt.show() then drew nothing
    code = f"""
import matplotlib
matplotlib.use("svg")
import torch, cct
from cct.training import train
from cct.plots import plot_architecture, plot_confusion_matrix
plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["cat", "dog"], {str(tmp_path / "cm.png")!r}, "cats and dogs")
plot_architecture(cct.create_model("cct_2_3x2_32"), {str(tmp_path / "architecture.png")!r})
print(matplotlib.get_backend())
"""
    drawn = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # and prints nothing else: the architecture's bold labels, given the CJK fonts too, logged "findfont: Failed
    # to find font weight bold for Droid Sans Fallback, now using 400" in every `cct card`
    assert (drawn.stdout, drawn.stderr) == ("svg\n", "")
    for name in ("cm.png", "architecture.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_class_names_in_chinese_and_japanese_are_drawn(tmp_path):
    # DejaVu Sans alone drew a box for each such character, and warned "Glyph 29483 (...) missing from font(s)
    # DejaVu Sans" at every figure of `cct train`, `cct evaluate` and `cct card`
    assert len(font_families()) > 1, f"no font of {CJK_FONTS} is installed (apt-get install fonts-droid-fallback)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph that no font draws is a warning
        plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["猫 cat", "犬 いぬ"], tmp_path / "cm.png", "猫と犬")
    assert Image.open(tmp_path / "cm.png").format == "PNG"


def test_a_cjk_font_installed_after_matplotlib_cached_its_font_list_is_found(tmp_path):
    # the README's set-up command drew figures (caching the font list), then its test command installed the font,
    # which the cache never listed: class names were drawn as boxes until the cache was deleted by hand
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True)
    [cache] = tmp_path.glob("fontlist-*.json")
    fonts = json.loads(cache.read_text())
    fonts["ttflist"] = [font for font in fonts["ttflist"] if font["name"] not in CJK_FONTS]
    cache.write_text(json.dumps(fonts))
    code = "from cct.plots import font_families; print(font_families())"
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert len(font_families()) > 1 and found.stdout.strip() == repr(font_families())


def test_training_curves_mark_the_kept_epoch_and_draw_the_learning_rate(tmp_path):
    lrs = [1e-3, 8e-4, 3e-4, 1e-5]
    rows = [{"epoch": str(e), "train_loss": "1.0", "train_acc": "0.5", "val_loss": "1.0", "val_acc": str(acc),
             "lr": str(lr)} for e, acc, lr in zip(range(1, 5), (0.3, 0.5, 0.5, 0.4), lrs)]
    loss_ax, acc_ax, lr_ax = plot_training_curves(rows, tmp_path / "curves.png").axes
    # the first epoch of the highest validation accuracy is the one training keeps
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["train", "val", "kept: epoch 2"]
    assert list(acc_ax.lines[-1].get_xydata()[0]) == [2, 50]
    assert list(lr_ax.lines[0].get_ydata()) == lrs
    unvalidated = [{**row, "val_loss": "", "val_acc": ""} for row in rows]
    _, acc_ax, _ = plot_training_curves(unvalidated, tmp_path / "curves.png").axes
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["train"]
    assert Image.open(tmp_path / "curves.png").size == (1680, 480)


def test_training_curves_shade_the_epochs_of_each_progressive_resize_stage(tmp_path):
    # the `fast` recipe's curves jumped where its images grew from 16 to 24 and 32 px, with nothing saying why
    rows = [{"epoch": str(e), "train_loss": "1.0", "train_acc": "0.5", "val_loss": "", "val_acc": "", "lr": "1e-3"}
            for e in range(1, 5)]
    stages = ((16, 2), (24, 3), (28, 1))
    for axes in (plot_training_curves(rows, tmp_path / "curves.png", stages).axes,
                 plot_training_curves(rows[:1], tmp_path / "curves.png", stages).axes):
        loss_ax = axes[0]
        epochs = int(loss_ax.lines[0].get_xdata()[-1])
        spans = [[tuple(round(x, 6) for x in ax.transData.inverted().transform(p.get_verts())[[0, 2], 0])
                  for p in ax.patches] for ax in axes]  # the first and third corners: left, right
        # each stage's epochs as far as the run has come, the next stage's not yet
        assert spans == 3 * [[(0.5, 2.5), (2.5, 4.5)] if epochs == 4 else [(0.5, 1.5)]]
        labels = [t.get_text() for t in loss_ax.get_legend().get_texts()]
        assert labels == (["16x16 images", "24x24 images"] if epochs == 4 else ["16x16 images"]) + ["train"]
        assert [ax.get_xlim() for ax in axes] == 3 * [(0.5, epochs + 0.5)]
        ticks = [t for t in loss_ax.get_xticks() if 0.5 < t < epochs + 0.5]
        assert 1 in ticks and all(t == int(t) for t in ticks)  # whole epochs (one epoch had 0.5, 0.6, ... 1.5)


def test_the_pooling_weights_are_drawn_as_large_as_the_input_beside_them(tmp_path):
    # the colorbar took its room from the overlay alone, which came out 9% narrower than the input
    image, heat = torch.rand(32, 32, 3).numpy(), torch.rand(32, 32).numpy()
    fig = plot_attention(image, heat, (8, 8), "cat 90.0%", tmp_path / "explained.png")
    left, right, colorbar = (ax.get_window_extent() for ax in fig.axes)
    assert (left.width, left.height) == pytest.approx((right.width, right.height))
    assert left.x1 < right.x0 and right.x1 < colorbar.x0
    assert Image.open(tmp_path / "explained.png").size == (960, 468)
    # the axes sit at fixed places (no layout engine, for speed): every text still inside the figure, with long
    # tick labels and a long title
    fig = plot_attention(image, heat * 0.0123, (8, 8), "长颈鹿 a-giraffe-among-zebras 90.0%", tmp_path / "long.png")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    drawn = fig.get_tightbbox(canvas.get_renderer())  # all that is drawn, in inches
    assert drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= 8 and drawn.y1 <= 3.9
    assert drawn.x1 > 7.5  # the colorbar's label and tick labels, next to the figure's right edge


@pytest.mark.parametrize("name", ["cct_keras", "vit_lite_6_4_32", "cvt_6_4_32", "cct_7_3x1_32_sine"])
def test_the_architecture_counts_every_parameter_and_token(tmp_path, name):
    # a ViT-Lite's class token was left out: 256 parameters missing, and 64 tokens became 65 between two stages
    model = cct.create_model(name)
    fig = plot_architecture(model, tmp_path / "architecture.png")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum(int(t.removesuffix(" params").replace(",", "")) for t in texts if t.endswith(" params")) == \
        cct.count_parameters(model)
    shapes = [t.removeprefix("out ") for t in texts if t.startswith("out ")]
    stream = shapes[shapes.index(f"{model.num_tokens}x{model.config.embed_dim}"):-2]  # the tokens to the pooling
    assert set(stream) == {f"{model.num_tokens}x{model.config.embed_dim}"}
    assert len(stream) == model.config.num_layers + 2 + (model.config.positional_embedding != "none")
