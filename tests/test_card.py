"""`cct card RUN`: a Hugging Face style folder that loads back, with the seed card's sections and real results."""

import json
import re
import shlex
import shutil
from dataclasses import replace

import pytest
import torch
from PIL import Image

import cct
from cct.card import _refilled
from cct.evaluation import evaluate_saved
from cct.cli import main
from cct.data import load_dataset
from cct.training import RECIPES, RunConfig, load_checkpoint, train
from tests.helpers import needs_kornia_policies, write_color_dataset

SEED_COLUMNS = ("| name | learning_rate | decay | beta_1 | beta_2 | epsilon | amsgrad | weight_decay | "
                "exclude_from_weight_decay | training_precision |")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    data = write_color_dataset(root / "colors", per_class=16)
    recipe = replace(RECIPES["small-cpu"], epochs=2, batch_size=8, val_size=8, warmup_epochs=1,
                     progressive_resize=((16, 1),))
    out, _ = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=recipe, out=str(root / "run")))
    return out


@needs_kornia_policies
def test_card_folder_has_the_seed_cards_sections_and_loads_back(umask, run, tmp_path, capsys):
    card = tmp_path / "card"
    assert main(["card", str(run), "--out", str(card)]) == 0
    # readable by others, as the umask has it (the folder and the figures were private: 0700 and 0600)
    assert {oct(p.stat().st_mode & 0o777) for p in (card, *card.iterdir())} == {"0o755", "0o644"}
    assert sorted(p.name for p in card.iterdir()) == ["README.md", "architecture.png", "config.json",
                                                      "confusion-matrix.png", "model.safetensors",
                                                      "training-curves.png"]
    for figure in ("architecture.png", "confusion-matrix.png", "training-curves.png"):
        assert Image.open(card / figure).size[0] > 500
    model = cct.from_pretrained(card)
    best, header = load_checkpoint(run / "best.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.state_dict().items())

    config = json.loads((card / "config.json").read_text())
    _, test = load_dataset(RunConfig.from_run(run).dataset, "data")
    expected = evaluate_saved(best, header, test)
    assert config["results"]["test_top1"] == pytest.approx(expected.top1)
    assert config["model"]["name"] == "cct_2_3x2_32" and config["recipe"]["name"] == "small-cpu"

    text = (card / "README.md").read_text()
    # prose refilled to 110 columns, a code span never split: the template's lines ran to 270 with what it put in
    assert all(len(line) <= 110 or line.startswith(("|", "![")) or re.fullmatch(r"`[^`]*`\.?", line)
               for line in text.splitlines())
    readme = " ".join(text.split())  # the words, whatever the line breaks
    for section in ("## Model description", "## Intended uses & limitations", "## Training and evaluation data",
                    "### Training hyperparameters", "## Training metrics", "## Model plot", "## Results"):
        assert section in readme
    assert SEED_COLUMNS in readme
    assert "| AdamW | 0.001 | cosine to 1e-05 after 1 warmup epoch from 0 | 0.9 | 0.999 | 1e-08 | False | 0.05 |" \
        in readme
    assert f"top-1 **{expected.top1:.2%}**" in readme and "| blue |" in readme and "| red |" in readme
    assert "AutoAugment (CIFAR-10 policy)" in readme and "moving average" in readme
    assert "progressive resizing: the first epochs trained on images resized to 16x16 for 1 epoch" in readme
    assert "the epochs of smaller images shaded](training-curves.png)" in readme and "](architecture.png)" in readme


@needs_kornia_policies
def test_a_card_counts_the_images_a_limited_run_trained_on(tmp_path):
    # it said "all 32 training images trained the model" of a run on the first 10
    data = write_color_dataset(tmp_path / "colors", per_class=16)
    for val_size, words in ((0, "the first 10 training images trained the model (the last epoch is kept)"),
                            (8, "the first 10 training images trained the model, the last 8 chose the best epoch")):
        recipe = replace(RECIPES["small-cpu"], epochs=1, batch_size=8, val_size=val_size, limit_train=10)
        out, _ = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=recipe,
                                 out=str(tmp_path / f"run{val_size}")))
        assert main(["card", str(out)]) == 0
        assert json.loads((out / "card" / "config.json").read_text())["results"]["train_images"] == 10
        readme = " ".join((out / "card" / "README.md").read_text().split())
        assert words in readme
        assert "Batch size 8, 1 epoch. " in readme  # was "1 epochs"
    # the training images are counted, not decoded: a card took the memory and time of loading them all
    (data / "train" / "red" / "0.png").write_bytes(b"not an image any more")
    assert main(["card", str(out), "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "config.json").read_text())["results"]["train_images"] == 10


@needs_kornia_policies
def test_a_card_of_a_run_whose_dataset_moved_reads_it_from_its_new_place(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    out, _ = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=replace(RECIPES["small-cpu"], epochs=1,
                             val_size=0), out=str(tmp_path / "run")))
    moved = data.rename(tmp_path / "colors-moved")
    assert main(["card", str(out)]) == 1  # it was "unknown dataset '.../colors': not one of cifar10, cifar100 ..."
    assert capsys.readouterr().err == f"cct: error: {data}: no such folder, the dataset {out} was trained on (moved? " \
                                      "give its new place with --dataset)\n"
    assert main(["card", str(out), "--dataset", str(moved / "test")]) == 1  # the training images are counted too
    assert capsys.readouterr().err == f"cct: error: {moved / 'test'}: no train/ folder (expected " \
                                      f"{moved / 'test'}/train/<class>/<image>)\n"  # it was ".../test/train: not a folder"
    assert main(["card", str(out), "--dataset", str(moved)]) == 0
    card = json.loads((out / "card" / "config.json").read_text())
    assert card["dataset"] == "colors-moved" and card["results"]["test_images"] == 16
    (moved / "test" / "red").rename(moved / "test" / "rot")
    (moved / "train" / "red").rename(moved / "train" / "rot")
    assert main(["card", str(out), "--dataset", str(moved)]) == 1
    assert capsys.readouterr().err.endswith(f"the model's classes are not {moved}'s (class 1: the model's 'red', "
                                            f"{moved}'s 'rot')\n")


@needs_kornia_policies
def test_a_failed_card_leaves_the_previous_one(run, tmp_path, capsys):
    card = tmp_path / "card"
    assert main(["card", str(run), "--out", str(card)]) == 0
    before = {p.name: p.read_bytes() for p in card.iterdir()}
    broken = tmp_path / "broken-run"
    broken.mkdir()
    (broken / "config.json").write_text((run / "config.json").read_text())
    assert main(["card", str(broken), "--out", str(card)]) == 1
    assert "metrics.csv: no such file" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in card.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@needs_kornia_policies
def test_a_run_stopped_before_its_last_epoch_gets_no_card(run, tmp_path, capsys):
    # the card of a run interrupted after its first epoch stated the recipe's 2 epochs (and its test results)
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (stopped / "metrics.csv").write_text("".join(lines[:2]))  # what the run held after epoch 1
    assert main(["card", str(stopped)]) == 1
    assert capsys.readouterr().err == (f"cct: error: {stopped}: the run stopped after epoch 1 of 2, and a card "
                                       f"describes a finished run: finish it first (`cct train --resume {stopped}`)\n")
    assert not (stopped / "card").exists()


@needs_kornia_policies
def test_a_card_replaces_only_a_card_never_a_run_or_another_folder_or_file(run, tmp_path, capsys):
    # `cct card RUN --out RUN` deleted the run (its checkpoints and state) to put the card in its place
    files = tmp_path / "files"
    files.mkdir()
    (files / "notes.txt").write_text("mine")
    (tmp_path / "a-file").write_text("mine too")
    for out in (run, files, tmp_path / "a-file"):
        before = {p: p.read_bytes() for p in sorted(out.rglob("*")) + [out] if p.is_file()}
        assert main(["card", str(run), "--out", str(out)]) == 1
        assert capsys.readouterr().err == f"cct: error: {out}: not a card folder, which a card would replace; " \
                                          "choose another --out\n"
        assert {p: p.read_bytes() for p in sorted(out.rglob("*")) + [out] if p.is_file()} == before
    card = tmp_path / "card"
    card.mkdir()  # an empty folder, and then a card, are replaced
    assert main(["card", str(run), "--out", str(card)]) == 0 and main(["card", str(run), "--out", str(card)]) == 0


@needs_kornia_policies
def test_the_cards_command_trains_the_run_as_configured(run, tmp_path, monkeypatch, capsys):
    # the card said `cct train --model M --recipe R` of a run whose recipe fields and dataset the command changed
    assert main(["card", str(run), "--out", str(tmp_path / "card")]) == 0
    readme = (tmp_path / "card" / "README.md").read_text()
    command = "cct train --model cct_2_3x2_32 --dataset colors --recipe small-cpu --epochs 2 --batch-size 8 " \
              "--val-size 8 --recipe-arg warmup_epochs=1 --recipe-arg 'progressive_resize=[[16, 1]]'"
    assert f"`{command}`" in readme
    monkeypatch.chdir(run.parent)  # where the folder named colors is
    assert main([*shlex.split(command)[1:], "--out", str(tmp_path / "again")]) == 0
    again, original = RunConfig.from_run(tmp_path / "again"), RunConfig.from_run(run)
    assert (again.recipe, again.model_config, again.dataset) == (original.recipe, original.model_config,
                                                                 original.dataset)
    assert main(["train", "--config", str(tmp_path / "card")]) == 1  # it said "unexpected keyword 'library_name'"
    assert capsys.readouterr().err.strip() == f"cct: error: {tmp_path / 'card' / 'config.json'}: a model card's " \
                                              "config, not a run's (the card's README.md gives the `cct train` " \
                                              "command that trains it)"


@pytest.mark.parametrize("name, tag, kind, origin, pools", [
    ("vit_lite_6_4_32", "vit-lite", "A ViT-Lite (", "The paper's ViT-Lite-6/4 baseline", "and a class token, prepended"),
    ("cvt_6_4_32", "compact-vision-transformer", "A Compact Vision Transformer (CVT) (", "The paper's CVT-6/4 baseline",
     "and sequence pooling")])
def test_a_card_names_the_papers_baselines_for_what_they_are(tmp_path, name, tag, kind, origin, pools):
    # both were carded as "A Compact Convolutional Transformer", "The paper's CCT-6/3x2", read by "a small
    # convolutional tokenizer" (the ViT-Lite also "sequence pooling")
    data = write_color_dataset(tmp_path / "colors", per_class=4)
    recipe = replace(RECIPES["keras-example"], epochs=1, batch_size=8, val_size=0)
    out, _ = train(RunConfig(model=name, dataset=str(data), recipe=recipe, out=str(tmp_path / "run"),
                             model_args={"embed_dim": 64}))
    assert main(["card", str(out)]) == 0
    text = (out / "card" / "README.md").read_text()
    assert f"tags:\n- image-classification\n- {tag}\n" in text
    readme = " ".join(text.split())
    assert kind in readme and origin in readme and pools in readme
    assert "has no convolutional tokenizer: its 4x4 patches, each projected as in ViT, make 64 tokens of width 64" \
        in readme
    assert "CCT-" not in readme and "a small convolutional tokenizer" not in readme


def test_refilling_keeps_the_markdown_it_was_given():
    # class names of any kind are put into the prose: a line starting "- " or "1. " there would begin a list
    text = "Classes (" + ", ".join(["a - b", "1. c", "# d", "e === f"] * 12) + ").\n- an item `with a code span` "
    text += "word " * 30 + "\n\n```python\nx  =  1   # kept as it is, a long line: " + "y " * 60
    text += "\n```\n| a | table |\n"
    for width in range(30, 60):
        refilled = _refilled(text, width)
        assert " ".join(refilled.split()) == " ".join(text.split())
        prose, code = refilled.split("```python\n")
        assert code == text.split("```python\n")[1]
        lines = prose.strip().splitlines()
        item = next(i for i, line in enumerate(lines) if line.startswith("- "))
        assert [line for line in lines if re.match(r"([-+*>=#]+|\d+[.)])( |$)", line)] == [lines[item]]
        assert "`with a code span`" in lines[item]
        assert all(len(line) <= width and line.startswith("  ") for line in lines[item + 1:])
