"""Two CPU processes with gloo train on the shards of each global batch: both end with the same weights, and
those of one process training on the whole global batches."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import psutil
import pytest
import torch
from safetensors.torch import load_file

import cct

from cct.cli import main
from cct.runtime import Runtime, available_cpus
from cct.training import RECIPES, RunConfig, load_checkpoint, train
from cct.training.distributed import interrupt_once, require_gpus
from tests.helpers import write_color_dataset

# no dropout, drop path or flips: randomness would differ between one process and two
MODEL_ARGS = {"dropout": 0.0, "attention_dropout": 0.0, "stochastic_depth": 0.0}
RECIPE = replace(RECIPES["keras-example"], epochs=2, batch_size=16, val_size=8, lr=2e-3, hflip=False)

RANK_SCRIPT = """
import os, sys
from dataclasses import replace
from safetensors.torch import save_file
from cct.runtime import Runtime
from cct.training import RunConfig, train
from tests.training.test_distributed import MODEL_ARGS, RECIPE

def dump(epoch, model):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.safetensors"))

train(RunConfig(model="cct_2_3x2_32", dataset=sys.argv[1], recipe=RECIPE, out=sys.argv[2],
                runtime=Runtime(precision="fp32"), model_args=MODEL_ARGS), on_epoch_end=dump)
"""


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    data = write_color_dataset(tmp_path / "colors")  # 40 training images: global batches of 16, 16, 8
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(data), str(out)], env={**os.environ, "PYTHONPATH": os.getcwd()},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 2 processes" in result.stdout
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    single, _ = train(RunConfig(model="cct_2_3x2_32", dataset=str(data), recipe=RECIPE, out=str(tmp_path / "one"),
                                runtime=Runtime(precision="fp32"), model_args=MODEL_ARGS))
    reference = load_checkpoint(single / "last.safetensors")[0].state_dict()
    written = load_checkpoint(out / "last.safetensors")[0].state_dict()  # by rank 0 alone
    for name, value in reference.items():
        assert torch.equal(written[name], rank0[name])
        if name == "pool.score.bias":
            # a shift of every token score changes no softmax: its true gradient is 0, and Adam's normalised
            # step follows the rounding noise, which differs between 1 and 2 processes
            continue
        assert torch.allclose(rank0[name], value, atol=1e-5, rtol=1e-4), name
    torch.manual_seed(RECIPE.seed)
    initial = cct.create_model("cct_2_3x2_32", num_classes=2, **MODEL_ARGS).state_dict()
    assert (rank0["head.weight"] - initial["head.weight"]).abs().max() > 1e-3  # the weights did train


def test_cct_train_nproc_runs_torchrun(tmp_path, monkeypatch, capfd):
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code = main(["train", "--nproc", "2", "--model", "cct_2_3x2_32", "--dataset", str(data), "--epochs", "1",
                 "--batch-size", "4", "--val-size", "4", "--out", str(tmp_path / "run")])
    assert code == 0
    # torchrun's banner "Setting OMP_NUM_THREADS environment variable for each process to be 1 ...": the ranks set
    # their threads themselves
    assert "OMP_NUM_THREADS" not in "".join(capfd.readouterr())
    assert (tmp_path / "run" / "test.json").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["processes"] == 2
    # the run's config trains it again in as many processes, epoch for epoch, into a folder rank 0 names for both
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(tmp_path / "run")]) == 0
    (again,) = (tmp_path / "runs").iterdir()
    assert json.loads((again / "config.json").read_text())["processes"] == 2
    metrics = [[row[:-1] for row in csv.reader((folder / "metrics.csv").open())] for folder in (tmp_path / "run", again)]
    assert len(metrics[0]) == 2 and metrics[0] == metrics[1]  # every column but the seconds
    # in one process it takes the CPU threads the two had between them (it kept one of two cores idle)
    assert main(["train", "--config", str(tmp_path / "run"), "--nproc", "1", "--out", str(tmp_path / "one")]) == 0
    threads = [json.loads((folder / "config.json").read_text())["runtime"]["threads"] for folder in
               (tmp_path / "run", tmp_path / "one")]
    assert threads == [max(1, available_cpus() // 2), 2 * max(1, available_cpus() // 2)]
    assert main(["card", str(tmp_path / "run")]) == 0
    readme = (tmp_path / "run" / "card" / "README.md").read_text()
    assert "--dataset colors --recipe keras-example --epochs 1 --batch-size 4 --val-size 4 --nproc 2`" in readme
    # it said "on cpu (1 threads, bf16)" of two processes
    threads = max(1, available_cpus() // 2)
    assert f" on cpu (2 processes of {threads} thread{'s' * (threads > 1)} each, " in readme


def test_a_failed_or_interrupted_nproc_run_says_so_once(tmp_path, monkeypatch, capfd):
    # each rank printed the error, then torchrun its warnings, a traceback of its own and a report (43 lines)
    data = write_color_dataset(tmp_path / "colors", per_class=8)
    shutil.rmtree(data / "test")
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    environ = dict(os.environ)
    assert main(["train", "--nproc", "2", "--model", "cct_2_3x2_32", "--dataset", str(data), "--epochs", "1"]) == 1
    assert capfd.readouterr().err == (f"cct: error: {data}: no test/ folder beside its train/ (expected "
                                      f"{data}/test/<class>/<image>)\n")
    assert dict(os.environ) == environ  # what the ranks inherited is not left behind
    # Ctrl-C reaches every process of the terminal's group: rank 0 alone says how to go on
    write_color_dataset(tmp_path / "more", per_class=8)
    command = [sys.executable, "-m", "cct", "train", "--nproc", "2", "--model", "cct_2_3x2_32", "--dataset",
               str(tmp_path / "more"), "--epochs", "1000", "--batch-size", "4", "--val-size", "0"]

    def stopped_in_epoch_2(out: str, stop) -> tuple[int, str]:
        training = subprocess.Popen([*command, "--out", out], cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        for line in training.stdout:
            if line.startswith("epoch   2/"):  # the state of epoch 1 is saved
                stop(training.pid)
                break
        return training.wait(timeout=60), training.stderr.read()

    assert stopped_in_epoch_2("run", lambda pid: os.killpg(pid, signal.SIGINT)) == (
        130, "cct: interrupted; `cct train --resume run` continues from the last saved state\n")
    # torchrun's agent forwards Ctrl-C to the ranks once more; here a copy of it lands in their clean-up
    def interrupted_twice(pid: int):
        ranks = psutil.Process(pid).children(recursive=True)
        os.killpg(pid, signal.SIGINT)
        time.sleep(0.005)
        for rank in ranks:
            rank.send_signal(signal.SIGINT)

    assert stopped_in_epoch_2("twice", interrupted_twice) == (
        130, "cct: interrupted; `cct train --resume twice` continues from the last saved state\n")
    # a rank killed outright is named (after rank 0's error of a broken connection, if it saw one)
    status, err = stopped_in_epoch_2("killed", lambda pid: next(
        p for p in psutil.Process(pid).children() if p.environ()["RANK"] == "1").kill())
    assert status == 1 and err.count("cct: error") == 1
    assert err.splitlines()[-1] == "cct: error: training process 1 of 2 was stopped by SIGKILL"


def test_a_rank_takes_ctrl_c_once():
    previous = signal.getsignal(signal.SIGINT)
    try:
        # Python's own handler, as in a rank (torchrun's launcher, run in this process by other tests, leaves its own)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupt_once()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # Python runs the handler between bytecodes
        os.kill(os.getpid(), signal.SIGINT)  # the copy torchrun forwards: ignored
        time.sleep(0.1)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_data_parallel_cuda_training_needs_a_gpu_per_process():
    available = torch.cuda.device_count()
    with pytest.raises(cct.CCTError, match=f"{available + 1} processes on CUDA need one GPU each, and this "
                                           f"machine has {available}"):
        require_gpus(available + 1)
