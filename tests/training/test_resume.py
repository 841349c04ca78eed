"""Kill a training run mid-epoch with SIGKILL, resume it, and get the very weights of a run never stopped."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from cct.cli import main
from cct.training import RECIPES, RunConfig, load_checkpoint, train
from tests.helpers import needs_kornia_policies, write_color_dataset

TRAIN = """
import sys
from dataclasses import replace
from cct.training import RECIPES, RunConfig, train
# every source of randomness and state: augmentation policies, mixing, the moving average of the weights
recipe = replace(RECIPES["keras-example"], epochs=3, batch_size=8, val_size=8, lr=3e-3, crop_padding=4,
                 auto_augment=True, mixup_alpha=0.8, cutmix_alpha=1.0, ema_decay=0.9)
train(RunConfig(model="cct_7_3x1_32", dataset=sys.argv[1], recipe=recipe, out=sys.argv[2], checkpoint_every=2))
"""


def _progress(state):
    try:
        with safe_open(state, "pt") as f:
            return json.loads(f.metadata()["progress"])
    except Exception:  # not written yet
        return None


@needs_kornia_policies
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=64)  # 120 training images: 15 steps an epoch
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", TRAIN, str(data), str(tmp_path / "whole")], check=True, env=env,
                   capture_output=True)

    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", TRAIN, str(data), str(run)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        progress = _progress(run / "state.safetensors")
        if progress and progress["epoch"] == 2 and progress["step"] >= 4:
            break
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "test.json").exists()
    killed_at = _progress(run / "state.safetensors")
    assert killed_at["epoch"] == 2 and 0 < killed_at["step"] < 15

    # as a user resumes: `cct train --resume` in a process of its own, whose MKL kernels are the first run's
    # (`mkl_avx2` applies to the routines a process has not yet called; this one has called them all)
    subprocess.run([sys.executable, "-m", "cct", "train", "--resume", str(run)], check=True, env=env,
                   capture_output=True)
    resumed, _ = load_checkpoint(run / "last.safetensors")
    whole, _ = load_checkpoint(tmp_path / "whole" / "last.safetensors")
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert json.loads((run / "test.json").read_text())["test_top1"] == \
        json.loads((tmp_path / "whole" / "test.json").read_text())["test_top1"]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "config.json: no such file (not a run folder)" in capsys.readouterr().err
    (tmp_path / "best.safetensors").write_bytes(b"a checkpoint")  # a traceback (NotADirectoryError)
    for option in ("--resume", "--config"):
        assert main(["train", option, str(tmp_path / "best.safetensors"), "--out", str(tmp_path / "x")]) == 1
        assert capsys.readouterr().err == f"cct: error: {tmp_path / 'best.safetensors'}: a file, not a run folder " \
                                          "or a run's config.json\n"


def test_a_copied_or_moved_run_resumes_in_its_own_folder(tmp_path, monkeypatch, capsys):
    # `cct train --resume COPY` read and wrote the folder the run was made in (its config's "out"), relative to
    # the working directory of the time
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "cct_2_3x2_32", "--dataset", str(data), "--val-size", "0", "--epochs", "1",
                 "--out", "first"]) == 0
    original = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "first").iterdir()}
    shutil.copytree(tmp_path / "first", tmp_path / "elsewhere" / "second")
    (tmp_path / "elsewhere" / "second" / "test.json").unlink()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["train", "--resume", "second"]) == 0
    assert "the run has finished its 1 epoch: testing" in capsys.readouterr().out  # it said "its 1 epochs"
    assert (tmp_path / "elsewhere" / "second" / "test.json").is_file()
    assert json.loads((tmp_path / "elsewhere" / "second" / "config.json").read_text())["out"] == "second"
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "first").iterdir()} == original
    assert not (tmp_path / "elsewhere" / "first").exists()


@needs_kornia_policies
def test_a_run_whose_dataset_moved_resumes_with_its_new_place_and_refuses_other_classes(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    run = tmp_path / "run"

    def stop(epoch, model):
        raise InterruptedError

    with pytest.raises(InterruptedError):
        train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=replace(RECIPES["small-cpu"], epochs=2,
                        batch_size=8, val_size=4), out=str(run)), on_epoch_end=stop)
    moved = data.rename(tmp_path / "colors-moved")
    # it was "unknown dataset '.../colors': not one of cifar10, cifar100 and not a folder ...", with no way to go on
    assert main(["train", "--resume", str(run)]) == 1
    assert capsys.readouterr().err == f"cct: error: {data}: no such folder, the dataset {run} was trained on (moved? " \
                                      "give its new place with --dataset)\n"
    # a class added or renamed: a traceback (size mismatch for head.weight), or labels read as the old classes
    (moved / "train" / "red").rename(moved / "train" / "rot")
    (moved / "test" / "red").rename(moved / "test" / "rot")
    assert main(["train", "--resume", str(run), "--dataset", str(moved)]) == 1
    assert capsys.readouterr().err == f"cct: error: {run}: the model's classes are not {moved}'s (class 1: the " \
                                      f"model's 'red', {moved}'s 'rot')\n"
    (moved / "train" / "rot").rename(moved / "train" / "red")
    (moved / "test" / "rot").rename(moved / "test" / "red")
    assert main(["train", "--resume", str(run), "--dataset", str(moved)]) == 0
    assert "resuming at epoch 2, step 0" in capsys.readouterr().out
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 2
    assert RunConfig.from_run(run).dataset == str(moved)  # evaluate, card and a later resume find it there
    assert main(["train", "--resume", str(run)]) == 0  # it said "resuming at epoch 3, step 0" of a 2-epoch run
    assert "the run has finished its 2 epochs: testing its best checkpoint again" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--model", "cct_7_3x1_32"]) == 1
    assert capsys.readouterr().err.endswith("--model cannot go with it\n")


def test_ctrl_c_says_how_to_continue_the_run(tmp_path):
    data = write_color_dataset(tmp_path / "colors", per_class=64)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    # `cct train`, taking Ctrl-C as a terminal's command does: a shell's background jobs ignore SIGINT, and so
    # would the run (as CI starts it); set in the child itself, as Python code between fork and exec may deadlock
    cct_train = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from cct.cli import main; " \
                "raise SystemExit(main())"
    process = subprocess.Popen([sys.executable, "-c", cct_train, "train", "--model", "cct_2_3x2_32", "--dataset",
                                str(data), "--val-size", "8", "--batch-size", "8", "--epochs", "100", "--out",
                                str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _progress(run / "state.safetensors") is None and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    errors = process.communicate(timeout=60)[1]
    assert process.returncode == 130
    assert errors.strip().splitlines()[-1] == \
        f"cct: interrupted; `cct train --resume {run}` continues from the last saved state"
