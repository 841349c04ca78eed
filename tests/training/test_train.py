import csv
import json
import re
import subprocess
import sys
from dataclasses import replace
from datetime import datetime

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cct
from cct.cli import main
from cct.inference import Classifier
from cct.training import RECIPES, RunConfig, load_checkpoint, train
from cct.training.loop import in_words, seconds_left
from tests.conftest import write_cifar10_folder
from tests.helpers import needs_kornia_policies, write_color_dataset


def _tiny_recipe(**overrides):
    return replace(RECIPES["keras-example"], **{"epochs": 2, "batch_size": 8, "val_size": 8, **overrides})


def test_training_on_an_image_folder_learns_and_writes_a_complete_run(tmp_path):
    data = write_color_dataset(tmp_path / "colors")
    run = RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(lr=3e-3), out=str(tmp_path / "run"))
    out, result = train(run)
    assert result.top1 >= 0.9  # red vs blue: a trained model separates them
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "best.json", "best.safetensors", "config.json", "last.json", "last.safetensors", "metrics.csv",
        "state.safetensors", "test.json", "training-curves.png"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["recipe"] == json.loads(json.dumps(run.recipe.to_dict()))  # every field, tuples as lists
    assert saved["model_config"]["class_names"] == ["blue", "red"]
    # printed and saved as a person reads it: a list a line (the betas took four, the stages ten)
    assert '\n    "betas": [0.9, 0.999],\n' in (out / "config.json").read_text()
    assert '\n    "class_names": ["blue", "red"]\n' in (out / "config.json").read_text()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 <= float(r["val_acc"]) <= 1 and float(r["seconds"]) > 0 for r in rows)
    assert Image.open(out / "training-curves.png").size[0] > 600
    test = json.loads((out / "test.json").read_text())
    assert test["test_top1"] == pytest.approx(result.top1) and test["test_images"] == 48
    best_epoch = max(rows, key=lambda r: float(r["val_acc"]))["epoch"]
    assert test["best_epoch"] == int(best_epoch)
    model, header = load_checkpoint(out)
    assert header["info"]["epoch"] == int(best_epoch)


def test_a_run_config_takes_a_recipes_name_and_paths(tmp_path):
    # recipe="fast" (timm-style) failed later with "'str' object has no attribute 'model_overrides'", and a
    # pathlib path with "Object of type PosixPath is not JSON serializable"
    run = RunConfig(model="cct_4_3x2_32", dataset=tmp_path / "photos", recipe="fast", data_dir=tmp_path,
                    out=tmp_path / "run", init_from=tmp_path / "source")
    assert run.recipe == RECIPES["fast"]
    assert (run.dataset, run.data_dir, run.out, run.init_from) == tuple(str(tmp_path / name) for name in
                                                                          ("photos", "", "run", "source"))
    assert json.loads(run.to_json())["out"] == str(tmp_path / "run")
    with pytest.raises(cct.CCTError, match=r"^unknown recipe 'fastest' \(choose from keras-example, fast, "):
        RunConfig(model="cct_4_3x2_32", dataset="photos", recipe="fastest")
    with pytest.raises(cct.CCTError, match=r"^recipe: expected a Recipe or a recipe's name \(see `cct recipes`\), "
                                           r"got dict$"):
        RunConfig(model="cct_4_3x2_32", dataset="photos", recipe={"epochs": 3})


def test_runs_started_in_the_same_second_get_a_folder_each(tmp_path, monkeypatch):
    # the default folder is named to the second: a loop of short runs wrote the second run over the first
    class Noon(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 4, 12, 0, 0)

    monkeypatch.setattr(cct.training.loop, "datetime", Noon)
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    monkeypatch.chdir(tmp_path)
    outs = [train(RunConfig(model="cct_2_3x2_32", dataset=str(data),
                            recipe=_tiny_recipe(epochs=1, val_size=0, seed=seed)))[0] for seed in (0, 1, 2)]
    base = "runs/cct_2_3x2_32-colors-20261204-120000"
    assert [str(out) for out in outs] == [base, f"{base}-2", f"{base}-3"]
    assert [json.loads((out / "config.json").read_text())["recipe"]["seed"] for out in outs] == [0, 1, 2]


def test_a_folder_trains_at_the_models_image_size(tmp_path, capsys):
    # its images were resized to 32 x 32 whatever the model: a 224 x 224 variant trained at 32 without a word
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    run = RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(epochs=1, val_size=0),
                    model_args={"img_size": 48}, out=str(tmp_path / "run"))
    out, _ = train(run)
    model, _ = load_checkpoint(out)
    assert model.config.img_size == 48 and model.num_tokens == 12 * 12
    assert main(["evaluate", "-c", str(out), "--dataset", str(data)]) == 0
    assert "cct_2_3x2_32 on " in capsys.readouterr().out


def test_a_run_on_a_relative_folder_is_found_again_from_elsewhere(tmp_path, monkeypatch, capsys):
    # the run recorded "colors" as given, and `cct evaluate -c RUN` elsewhere found no such dataset
    write_color_dataset(tmp_path / "colors", per_class=8)
    monkeypatch.chdir(tmp_path)
    out, _ = train(RunConfig(model="cct_2_3x2_32", dataset="colors", recipe=_tiny_recipe(epochs=1, val_size=0),
                             out=str(tmp_path / "run")))
    assert json.loads((out / "config.json").read_text())["dataset"] == str(tmp_path / "colors")
    monkeypatch.chdir(tmp_path / "colors")
    assert main(["evaluate", "-c", str(out)]) == 0
    assert "cct_2_3x2_32 on " in capsys.readouterr().out
    assert main(["card", str(out)]) == 0


def test_evaluate_finds_cifar_where_the_run_did(tmp_path, monkeypatch, capsys):
    # `cct evaluate -c RUN` looked in ./data whatever --data-dir the run had, and went to download CIFAR-10
    write_cifar10_folder(tmp_path / "cifar")  # 100 training and 20 test images
    out, result = train(RunConfig(model="cct_2_3x2_32", dataset="cifar10", data_dir=str(tmp_path / "cifar"),
                                  recipe=_tiny_recipe(epochs=1, val_size=20), out=str(tmp_path / "run")))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "-c", str(out)]) == 0
    assert "cct_2_3x2_32 on cifar10 (20 test images)" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()


def test_without_a_validation_set_all_training_images_train_and_the_last_epoch_is_kept(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    recipe = _tiny_recipe(val_size=0, lr=3e-3)
    out, result = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=recipe, out=str(tmp_path / "run")))
    printed = capsys.readouterr().out
    assert "train 16 | val 0 |" in printed and "val loss" not in printed and "last epoch | test top-1" in printed
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [("1", ""), ("2", "")]
    assert Image.open(out / "training-curves.png").size[0] > 600
    model, header = load_checkpoint(out)
    assert (header["info"]["epoch"], header["info"]["val_acc"]) == (2, None)
    last, _ = load_checkpoint(out / "last.safetensors")
    assert all(torch.equal(v, last.state_dict()[k]) for k, v in model.state_dict().items())
    assert main(["evaluate", "-c", str(out), "--dataset", str(data)]) == 0
    assert f"top-1 {result.top1:.2%}" in capsys.readouterr().out
    assert main(["card", str(out)]) == 0
    card = (out / "card" / "README.md").read_text()
    assert "all 16 training images trained the model (the last epoch is kept)" in card


def test_progressive_resizing_trains_the_first_epochs_on_smaller_images(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    seen: list[list[tuple[int, int]]] = [[]]  # (image size, images) of each training forward pass, by epoch

    def record(module, inputs, output):
        if isinstance(module, cct.CCT) and module.training:
            seen[-1].append((inputs[0].shape[-1], len(inputs[0])))

    recipe = _tiny_recipe(epochs=3, val_size=0, progressive_resize=((16, 1), (24, 1)))
    with torch.nn.modules.module.register_module_forward_hook(record):
        out, result = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=recipe,
                                      out=str(tmp_path / "run")), on_epoch_end=lambda epoch, model: seen.append([]))
    assert [{size for size, _ in epoch} for epoch in seen] == [{16}, {24}, {32}, set()]
    assert [sum(images for _, images in epoch) for epoch in seen] == [16, 16, 16, 0]
    assert result.top1 >= 0.9
    assert json.loads((out / "config.json").read_text())["recipe"]["progressive_resize"] == [[16, 1], [24, 1]]


def test_a_stage_too_small_for_the_tokenizer_is_refused_before_the_data_is_read(tmp_path):
    # torch's "Kernel size can't be greater than actual input size" came in the first epoch, after the data loaded
    recipe = _tiny_recipe(epochs=3, progressive_resize=((16, 1), (2, 1)))
    with pytest.raises(cct.CCTError, match=r"^recipe field progressive_resize: stage 2x2: cct_2_3x2_32_keras: a 2x2 "
                                           r"image is too small for its 2 convolutions of kernel 3 and stride-2 "
                                           r"max-pools; give larger images or a smaller tokenizer$"):
        train(RunConfig(model="cct_keras", dataset=str(tmp_path / "not read"), recipe=recipe, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_each_epoch_says_how_long_the_rest_should_take_counting_the_pixels_of_its_images(tmp_path, capsys):
    recipe = _tiny_recipe(epochs=4, progressive_resize=((16, 1), (24, 1)))
    # after 10 s at 16 px: one epoch at 24 px (2.25x the pixels) and two at 32 px (4x each)
    assert seconds_left(recipe, 1, 10.0, 32) == pytest.approx(10.0 * (2.25 + 4 + 4))
    assert seconds_left(recipe, 3, 60.0, 32) == 60.0 and seconds_left(recipe, 4, 60.0, 32) == 0.0
    assert [in_words(s) for s in (0.2, 1.4, 2.6, 89.6, 90, 3600, 5399, 5400, 30000)] == [
        "1 second", "1 second", "3 seconds", "90 seconds", "2 minutes", "60 minutes", "90 minutes", "1.5 hours",
        "8.3 hours"]
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=recipe, out=str(tmp_path / "run")))
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if " parameters | " in line][0].endswith(" | 1 process")  # "1 process(es)"
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [bool(re.search(r"s \| ~\d+ seconds? left$", line)) for line in epochs] == [True, True, True, False]


def test_a_validation_set_must_leave_training_images(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    message = (r"val_size 16: must leave training images \(the set has 16; set --val-size, e.g. 1 for a tenth, "
               r"or 0 for none\)$")
    with pytest.raises(cct.CCTError, match=message):
        train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(val_size=16),
                        out=str(tmp_path / "run")))


def test_a_recipe_sets_the_model_regularisation_and_model_args_override_it(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    recipe = _tiny_recipe(epochs=1, dropout=0.0, stochastic_depth=0.0, attention_dropout=0.0)
    train(RunConfig(model="cct_keras", dataset=str(data), recipe=recipe, out=str(tmp_path / "run"),
                    model_args={"attention_dropout": 0.2}))
    config = json.loads((tmp_path / "run" / "config.json").read_text())["model_config"]
    assert (config["dropout"], config["stochastic_depth"], config["attention_dropout"]) == (0.0, 0.0, 0.2)
    model, _ = load_checkpoint(tmp_path / "run")
    assert [b.dropout.p for b in model.blocks] == [0.0, 0.0] and model.blocks[0].attn.attn_drop.p == 0.2


def test_same_seed_same_weights(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    weights = []
    for i in range(2):
        out, _ = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(epochs=1),
                                 out=str(tmp_path / f"run{i}")))
        weights.append(load_checkpoint(out / "last.safetensors")[0].state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@needs_kornia_policies
def test_ema_weights_are_the_ones_validated_and_saved(tmp_path, capsys):
    """With every augmentation and mixing on: the run trains, and its checkpoints hold the moving average of the
    weights (kept in the training state beside the raw weights), not the raw weights."""
    data = write_color_dataset(tmp_path / "colors", per_class=16)
    out = tmp_path / "run"
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--out", str(out), "--epochs", "2",
                 "--batch-size", "8", "--val-size", "8", "--recipe", "cct-paper-300", "--recipe-arg",
                 "ema_decay=0.9", "--recipe-arg", "random_erasing=0.25", "--recipe-arg", "warmup_epochs=1",
                 "--no-keep-freed-memory", "--no-fold-attention", "--no-mkl-avx2"]) == 0
    config = RunConfig.from_run(out)
    assert config.recipe.rand_augment == (2, 9.0, 0.5) and config.recipe.ema_decay == 0.9
    assert config.runtime.keep_freed_memory is False and config.runtime.fused_optimizer is True
    assert config.runtime.fold_attention is False and config.runtime.mkl_avx2 is False
    with safe_open(out / "state.safetensors", "pt") as f:
        raw = {k[len("model."):]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
        averaged = {k[len("ema.module."):]: f.get_tensor(k) for k in f.keys() if k.startswith("ema.module.")}
        assert f.get_tensor("ema.n_averaged").item() == 2 * 3  # after each step: 24 images, batches of 8
    saved = load_checkpoint(out / "last.safetensors")[0].state_dict()
    assert set(saved) == set(raw) == set(averaged)
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert not all(torch.equal(saved[k], raw[k]) for k in saved)


def test_tensorboard_logs_the_metrics_of_metrics_csv(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    out, result = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(),
                                  out=str(tmp_path / "run"), tensorboard=True))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    for tag, column in (("train/loss", "train_loss"), ("val/acc", "val_acc"), ("lr", "lr")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows], rel=1e-6)
    assert events.Scalars("test/top1")[0].value == pytest.approx(result.top1)
    # a run that starts from another's weights logs too (it raised AttributeError: 'str' object has no attribute
    # 'enter_context')
    tuned, _ = train(RunConfig(model=None, dataset=str(data), recipe=_tiny_recipe(), init_from=str(out),
                               out=str(tmp_path / "tuned"), tensorboard=True))
    events = EventAccumulator(str(tuned / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("train/loss")] == [1, 2]


@pytest.mark.slow
def test_real_cifar10_smoke_run_then_evaluate_and_predict(tmp_path, cifar10_dir, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "cct_keras", "--data-dir", str(cifar10_dir), "--epochs", "1",
                 "--limit-train", "5000", "--limit-test", "2000", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch   1/1 | train loss" in printed and "val loss" in printed and "top-5" in printed
    test = json.loads((out / "test.json").read_text())
    assert test["test_images"] == 2000
    assert test["test_top1"] > 0.18  # chance is 0.10

    assert main(["evaluate", "-c", str(out), "--data-dir", str(cifar10_dir)]) == 0
    printed = capsys.readouterr().out
    assert "on cifar10 (10,000 test images): top-1" in printed and "  truck" in printed
    assert Image.open(out / "best-cifar10-confusion.png").format == "PNG"

    # a real test image, written as a file of another size and mode, is predicted as training saw it
    _, test_set = cct.data.load_cifar("cifar10", cifar10_dir, download_missing=False)
    model, _ = load_checkpoint(out)
    image = Image.fromarray(test_set.images[0].permute(1, 2, 0).numpy())
    image.save(tmp_path / "plane.png")
    image.convert("RGBA").resize((96, 96), Image.Resampling.NEAREST).save(tmp_path / "plane-big.png")
    assert main(["predict", "-c", str(out), str(tmp_path / "plane.png"), str(tmp_path / "plane-big.png"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    expected = Classifier(model).predict(test_set.images[0])
    assert results[0]["labels"] == expected.labels
    assert results[0]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert results[1]["labels"][0] == expected.labels[0]


def test_fine_tuning_takes_a_runs_weights_but_the_head_and_resumes_without_them(tmp_path, monkeypatch, capsys):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    source, _ = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(epochs=1, val_size=0),
                                out=str(tmp_path / "source")))
    tones = tmp_path / "tones"  # the same images, other classes: the source's head does not apply
    for split in ("train", "test"):
        for old, new in (("blue", "bluish"), ("red", "reddish")):
            (tones / split).mkdir(parents=True, exist_ok=True)
            (data / split / old).rename(tones / split / new)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--init-from", "source", "--model", "cct_keras", "--dataset", "tones", "--out", "x"]) == 1
    assert capsys.readouterr().err.strip().endswith("--model cct_keras: source holds a cct_2_3x2_32; leave --model out")

    def crash_after_the_first_epoch(epoch: int, model: cct.CCT) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    run = RunConfig(model=None, dataset="tones", recipe=_tiny_recipe(lr=1e-30, val_size=0), init_from="source",
                    model_args={"img_size": 48}, out=str(tmp_path / "tuned"))  # lr 1e-30: the weights stay put
    with pytest.raises(KeyboardInterrupt):
        train(run, on_epoch_end=crash_after_the_first_epoch)
    assert f"starting from the weights of {source} (cct_2_3x2_32): the head made anew (2 classes); the position " \
           "table resampled from 64 to 144 tokens" in capsys.readouterr().out
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert (saved["model"], saved["init_from"]) == ("cct_2_3x2_32", str(source))
    (source / "best.safetensors").rename(tmp_path / "moved.safetensors")  # a resumed run needs its state only
    out, _ = train(RunConfig.from_run(tmp_path / "tuned"), resume=True)
    started, after = load_checkpoint(tmp_path / "moved.safetensors")[0], load_checkpoint(out)[0]
    assert after.config.class_names == ("bluish", "reddish") and after.config.img_size == 48
    before = {**started.state_dict(), "pos_embed": started.position_table(144).detach()}
    for name, value in after.state_dict().items():
        assert torch.allclose(value, before[name], rtol=0, atol=1e-20) != name.startswith("head."), name
    assert main(["card", str(out)]) == 0
    card = (out / "card" / "README.md").read_text()
    assert f"starting from the weights of `{source}`" in card
    assert f"`cct train --model cct_2_3x2_32 --init-from {source} --dataset tones --recipe keras-example --epochs 2 " \
           "--batch-size 8 --lr 1e-30 --val-size 0 --model-arg img_size=48`" in card
    assert re.search(r"Trained in \d+ seconds? on cpu", card)  # "0 minutes" before
    assert json.loads((out / "card" / "config.json").read_text())["init_from"] == str(source)


@pytest.mark.parametrize("init_from", [None, "cct_4_3x2_32"])
def test_fine_tuning_bundled_weights_on_unseen_images_beats_training_from_scratch(init_from, tmp_path, cifar10_dir):
    # 100 training and 100 test images of three classes from CIFAR-10's test set, which the weights never saw
    _, images = cct.data.load_cifar("cifar10", cifar10_dir, download_missing=False)
    for label, name in ((1, "automobile"), (6, "frog"), (8, "ship")):
        index = (images.labels == label).nonzero().flatten().tolist()
        for split, part in (("train", index[:100]), ("test", index[100:200])):
            (tmp_path / "data" / split / name).mkdir(parents=True, exist_ok=True)
            for i in part:
                image = Image.fromarray(images.images[i].permute(1, 2, 0).numpy())
                image.save(tmp_path / "data" / split / name / f"{i}.png")
    model = [] if init_from else ["--model", "cct_4_3x2_32"]
    source = ["--init-from", init_from] if init_from else []
    assert main(["train", *model, *source, "--dataset", str(tmp_path / "data"), "--epochs", "2", "--batch-size", "32",
                 "--val-size", "0", "--out", str(tmp_path / "run")]) == 0
    top1 = json.loads((tmp_path / "run" / "test.json").read_text())["test_top1"]
    # measured: 94.0% fine-tuned, 59.7% from scratch
    assert top1 >= 0.85 if init_from else top1 <= 0.75


def test_a_grayscale_model_trains_on_a_folder_read_in_gray_and_predicts_and_explains_files(tmp_path, capsys):
    # in_chans=1 was accepted, then the first step failed: every image was read as RGB
    data = write_color_dataset(tmp_path / "colors")  # red is brighter than blue in gray (luma 0.299 R, 0.114 B)
    out = tmp_path / "run"
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--epochs", "2",
                 "--batch-size", "8", "--val-size", "0", "--lr", "3e-3", "--model-arg", "in_chans=1",
                 "--model-arg", "mean=[0.3]", "--model-arg", "std=[0.2]", "--out", str(out)]) == 0
    assert json.loads((out / "test.json").read_text())["test_top1"] >= 0.9
    red = data / "test" / "red" / "0.png"
    capsys.readouterr()
    assert main(["predict", "-c", str(out), str(red), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["labels"][0] == "red"
    assert main(["explain", "-c", str(out), str(red), "--out", str(tmp_path / "red.png")]) == 0
    assert Image.open(tmp_path / "red.png").format == "PNG"
    assert main(["card", str(out)]) == 0
    assert "32x32 grayscale images" in (out / "card" / "README.md").read_text()
    assert main(["train", "--model", "cct_2_3x2_32", "--model-arg", "in_chans=1", "--model-arg", "mean=[0.3]",
                 "--model-arg", "std=[0.2]", "--data-dir", str(tmp_path), "--out", str(tmp_path / "cifar")]) == 1
    assert capsys.readouterr().err.strip().endswith("cifar10: its images are RGB, so the model's in_chans must be 3, "
                                                    "not 1")
    # in_chans=1 alone was "model config field mean: expected 1 values (in_chans), got [0.4914, 0.4822, 0.4465]"
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--epochs", "1", "--val-size", "0",
                 "--model-arg", "in_chans=1", "--out", str(tmp_path / "gray-stats")]) == 0
    assert cct.from_pretrained(tmp_path / "gray-stats").config.mean == (0.4809,)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    data = write_color_dataset(tmp_path / "colors")
    out = tmp_path / "run"
    saved = {}

    def poison_after_the_first_epoch(epoch: int, model: cct.CCT) -> None:
        saved.update({name: (out / name).read_bytes() for name in ("best.safetensors", "last.safetensors",
                                                                    "training-curves.png")})
        with torch.no_grad():
            model.head.weight.fill_(float("inf"))

    with pytest.raises(cct.CCTError, match=r"the loss became (nan|inf) in epoch 2 \(step 5\); stopped, "
                       f"keeping the last good checkpoints in {re.escape(str(out))} ") as failed:
        train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(), out=str(out)),
              on_epoch_end=poison_after_the_first_epoch)
    # and the curves of the epochs before it, drawn at each epoch's end (they were drawn when the run ended)
    assert {name: (out / name).read_bytes() for name in saved} == saved
    # while the error is kept (as a notebook keeps the last one), another process resumes the run: the failed run
    # held the folder's lock until its traceback was freed ("another process is training into this run folder")
    resumed = subprocess.run([sys.executable, "-m", "cct", "train", "--resume", str(out)], capture_output=True,
                             text=True)
    assert failed.value is not None and resumed.returncode == 0, resumed.stderr
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 2


def test_training_into_a_run_folder_a_file_or_a_folder_of_other_files_is_refused_and_leaves_it_alone(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "colors")
    out = tmp_path / "run"
    train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(epochs=1), out=str(out)))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--out", str(out), "--epochs", "1"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        f"{out}: already holds a run; continue it with `cct train --resume {out}`, or choose another --out")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert main(["train", "--dataset", str(data), "--out", str(out / "config.json")]) == 1
    assert capsys.readouterr().err.strip().endswith(f"{out / 'config.json'}: a file, not a run folder")
    assert main(["train", "--dataset", str(data), "--val-size", "0", "--out", str(out / "config.json" / "run")]) == 1
    assert capsys.readouterr().err == f"cct: error: {out / 'config.json' / 'run'}: cannot create the folder (Not a " \
                                      "directory)\n"
    # a folder of other files: its config.json, metrics.csv, ... were overwritten
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"mine": true}')
    (project / "notes.txt").write_text("mine too")
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--out", str(project)]) == 1
    assert capsys.readouterr().err == f"cct: error: {project}: holds other files than a run's (config.json, " \
                                      "notes.txt); choose a new or empty --out\n"
    assert sorted((p.name, p.read_text()) for p in project.iterdir()) == [
        ("config.json", '{"mine": true}'), ("notes.txt", "mine too")]
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (project / name).write_text("mine")
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--out", str(project)]) == 1
    assert capsys.readouterr().err == f"cct: error: {project}: holds other files than a run's (config.json, " \
                                      "a.txt, b.txt, c.txt, d.txt and 2 more); choose a new or empty --out\n"


def test_a_run_folder_another_process_trains_into_is_refused_and_left_alone(tmp_path):
    # `cct train --resume RUN` while the run still trained went on beside it, both overwriting its checkpoints
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    out, _ = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(epochs=1),
                             out=str(tmp_path / "run")))
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from cct.files import "
                               f"lock_run_folder\nwith lock_run_folder(Path({str(out)!r})): print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = {path.name: path.read_bytes() for path in out.iterdir()}
        again = RunConfig.from_run(out)
        again.recipe = replace(again.recipe, epochs=2)
        with pytest.raises(cct.CCTError, match=f"^{re.escape(str(out))}: another process is training into this "
                           "run folder; wait for it to end, or stop it$"):
            train(again, resume=True)
        assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    finally:
        holder.communicate("")
    train(again, resume=True)  # once that process has ended
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 2


def test_a_run_that_failed_before_its_first_epoch_ended_can_be_started_again(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "colors")
    out = tmp_path / "run"
    # it said "keeping the last good checkpoints in RUN" of a folder without any
    with pytest.raises(cct.CCTError, match=r"^the loss became nan in epoch 1 \(step 5\); stopped before the first "
                       r"checkpoint \(try a lower --lr\)$"):
        train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(epochs=1, lr=1e300),
                        out=str(out)))
    assert sorted(path.name for path in out.iterdir()) == [".lock", "config.json"]
    capsys.readouterr()
    # it printed the whole config and the model, then "RUN/state.safetensors: no training state to resume from"
    assert main(["train", "--resume", str(out)]) == 1
    assert capsys.readouterr() == ("", f"cct: error: {out}: no training state to resume from (the run stopped before "
                                       f"its first epoch ended); start it again with `cct train --config {out} --out "
                                       f"{out}`\n")
    _, result = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=_tiny_recipe(epochs=1), out=str(out)))
    assert result is not None and (out / "best.safetensors").exists()


def test_a_runs_config_trains_the_same_run_again_and_an_edited_copy_a_changed_one(tmp_path, capsys):
    # a run's config.json holds all of it, yet training it again took retyping every option it records
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    first = tmp_path / "first"
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--out", str(first), "--epochs", "2",
                 "--batch-size", "8", "--val-size", "4", "--lr", "3e-3", "--model-arg", "positional_embedding=sine",
                 "--recipe-arg", "crop_padding=2"]) == 0
    assert main(["train", "--config", str(first), "--out", str(tmp_path / "again")]) == 0

    def metrics(run):  # every column but the seconds
        return [row[:-1] for row in csv.reader((run / "metrics.csv").open())]

    saved = json.loads((first / "config.json").read_text())
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == {**saved, "out": str(tmp_path / "again")}
    assert len(metrics(first)) == 3 and metrics(tmp_path / "again") == metrics(first)
    weights = [load_checkpoint(run / "last.safetensors")[0].state_dict() for run in (first, tmp_path / "again")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])

    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**saved, "recipe": {**saved["recipe"], "epochs": 1}}))
    assert main(["train", "--config", str(edited), "--out", str(tmp_path / "shorter")]) == 0
    assert metrics(tmp_path / "shorter") == metrics(first)[:2]  # a constant lr: its one epoch is the first's

    capsys.readouterr()
    assert main(["train", "--config", str(first), "--epochs", "3", "--seed", "1"]) == 1
    assert capsys.readouterr().err.strip() == f"cct: error: --config takes the whole config of {first}; --epochs, " \
                                              "--seed cannot go with it (edit a copy of its config.json to change it)"
    assert main(["train", "--resume", str(first), "--epochs", "3"]) == 1  # it ran the saved epochs, silently
    assert capsys.readouterr().err.strip() == f"cct: error: --resume takes the whole config of {first}; --epochs " \
                                              "cannot go with it"


def test_an_edited_config_that_cannot_train_is_refused_naming_it(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    first = tmp_path / "first"
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--out", str(first), "--epochs", "1",
                 "--batch-size", "8", "--val-size", "4"]) == 0
    saved = json.loads((first / "config.json").read_text())
    edited, card = tmp_path / "edited.json", tmp_path / "card" / "config.json"
    card.parent.mkdir()
    card.write_text(json.dumps({"library_name": "compact-transformers"}))
    capsys.readouterr()
    # a bad field did not name the file
    edited.write_text(json.dumps({**saved, "recipe": {**saved["recipe"], "epochs": 0}}))
    assert main(["train", "--config", str(edited), "--out", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err == f"cct: error: {edited}: recipe field epochs: expected an integer of at least 1, " \
                                      "got 0\n"
    assert main(["train", "--config", str(card), "--out", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err.startswith(f"cct: error: {card}: a model card's config, not a run's (the card's")
    # an edit of model_config, made anew from model and model_args, was ignored: the run trained the saved model
    edited.write_text(json.dumps({**saved, "model_config": {**saved["model_config"], "num_layers": 1,
                                                            "mlp_ratio": 2.0}}))
    assert main(["train", "--config", str(edited), "--out", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err == (
        f"cct: error: {edited}: model_config mlp_ratio, num_layers: not what its model and model_args make, which a "
        'new run trains: give the changes as model_args ("model_args": {"mlp_ratio": 2.0, "num_layers": 1}), or '
        "delete model_config to train what they make\n")
    # model_args (the model_config left as saved), or another model, train as given
    edited.write_text(json.dumps({**saved, "model_args": {"mlp_ratio": 2.0, "num_layers": 1}}))
    assert main(["train", "--config", str(edited), "--out", str(tmp_path / "b")]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())["model_config"]
    assert (config["num_layers"], config["mlp_ratio"]) == (1, 2.0) and not (tmp_path / "a").exists()
    edited.write_text(json.dumps({**saved, "model": "cct_keras"}))
    assert main(["train", "--config", str(edited), "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model_config"]["name"] == "cct_2_3x2_32_keras"
