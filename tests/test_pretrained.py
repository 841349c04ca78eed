"""Bundled weights: found by name, verified by sha256, used by the commands without a checkpoint, and as
accurate on the real CIFAR-10 test set as their cards say."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import cct
from cct import pretrained
from cct.cli import main
from cct.data import load_cifar
from cct.errors import CCTError

KERAS = pretrained.pretrained_weights("cct_keras")


def test_every_bundled_card_states_the_recorded_accuracy_and_hash():
    assert {w.model for w in pretrained.BUNDLED} >= {"cct_2_3x2_32_keras", pretrained.DEFAULT_MODEL}
    for weights in pretrained.BUNDLED:
        assert hashlib.sha256((weights.folder / "model.safetensors").read_bytes()).hexdigest() == weights.sha256
        results = json.loads((weights.folder / "config.json").read_text())["results"]
        assert results["test_top1"] == pytest.approx(weights.top1, abs=5e-5) and results["test_images"] == 10000
        assert f"top-1 **{weights.top1:.2%}**" in (weights.folder / "README.md").read_text()


def test_create_model_with_pretrained_weights():
    model = cct.create_model("cct_keras", pretrained="cifar10")
    assert model.config.name == "cct_2_3x2_32_keras" and not model.training
    assert model.config.class_names[0] == "airplane"
    assert cct.from_pretrained("cct_keras").state_dict().keys() == model.state_dict().keys()
    assert cct.list_models(pretrained=True) == ["cct_2_3x2_32_keras", "cct_4_3x2_32"]  # timm's filter
    assert cct.list_models("*keras", pretrained=True, include_aliases=True) == ["cct_2_3x2_32_keras", "cct_keras"]
    default = cct.create_model("cct_keras", pretrained=True).state_dict()  # timm's spelling: the default weights
    assert all(torch.equal(default[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CCTError, match="no pretrained cifar100 weights for cct_keras"):
        cct.create_model("cct_keras", pretrained="cifar100")
    with pytest.raises(CCTError, match="fix the model config: positional_embedding is 'learnable' there, not 'sine'"):
        cct.create_model("cct_keras", pretrained="cifar10", num_classes=100, positional_embedding="sine")
    # as in timm, another number of classes gets a new head, the rest of the weights are the pretrained ones
    tuned = cct.create_model("cct_keras", pretrained=True, num_classes=100).state_dict()
    assert tuned["head.weight"].shape == (100, 128)
    assert all(torch.equal(tuned[k], v) for k, v in default.items() if not k.startswith("head."))
    with pytest.raises(CCTError, match="unknown model config field 'num_class'"):
        cct.create_model("cct_keras", pretrained=True, num_class=10)
    agreeing = cct.create_model("cct_keras", pretrained=True, num_classes=10, img_size=32).state_dict()
    assert all(torch.equal(agreeing[k], v) for k, v in default.items())
    # a name that is neither a path nor a model said "cct_kers: no such checkpoint"
    with pytest.raises(CCTError, match=r"^cct_kers: no such checkpoint, run or card folder, and not a model name "
                       r"\(`cct models` lists them\)$"):
        cct.from_pretrained("cct_kers")
    with pytest.raises(CCTError, match="^no pretrained cifar10 weights for cct_7_3x1_32"):
        cct.from_pretrained("cct_7_3x1_32")


def test_altered_weights_are_refused(tmp_path, monkeypatch):
    shutil.copytree(KERAS.folder, tmp_path / KERAS.folder.name)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    path = tmp_path / KERAS.folder.name / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CCTError, match="model.safetensors: sha256 .* does not match the recorded"):
        cct.create_model("cct_keras", pretrained="cifar10")
    path.unlink()
    with pytest.raises(CCTError, match="bundled weights missing"):
        cct.create_model("cct_keras", pretrained="cifar10")


def _test_images(folder, cifar10_dir, count=20):
    _, test = load_cifar("cifar10", cifar10_dir)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i}-{test.classes[test.labels[i]]}.png")
        Image.fromarray(np.ascontiguousarray(test.images[i].permute(1, 2, 0).numpy())).save(paths[-1])
    return paths


def test_predict_without_a_checkpoint_uses_the_default_bundled_model(tmp_path, cifar10_dir, capsys):
    images = _test_images(tmp_path, cifar10_dir)
    outputs = []
    for source in ([], ["--pretrained", pretrained.DEFAULT_MODEL], ["--pretrained", "cct_keras"]):
        assert main(["predict", *map(str, images), "--top-k", "1", "--json", *source]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] != outputs[2]
    for output in outputs:
        correct = sum(p["image"].split("-")[-1] == f"{p['labels'][0]}.png" for p in output)
        assert correct >= 14  # 20 real test images; the models score 77% and more on all 10,000


@pytest.mark.slow
@pytest.mark.parametrize("weights", pretrained.BUNDLED, ids=lambda w: w.model)
def test_evaluate_pretrained_reproduces_the_stated_accuracy(weights, cifar10_dir, tmp_path, capsys):
    assert main(["evaluate", "--pretrained", weights.model, "--data-dir", str(cifar10_dir),
                 "--out", str(tmp_path / "confusion.png")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    top1 = float(line.split("top-1 ")[1].split("%")[0]) / 100
    assert top1 == pytest.approx(weights.top1, abs=0.001)
