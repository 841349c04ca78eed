"""cct_keras is the keras.io CCT exactly: the same model built with Keras 3, given random weights, mapped
onto cct_keras, gives the same logits."""

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import cct  # noqa: E402
from cct.cli import main  # noqa: E402
from cct.convert import state_dict_from_keras_weights  # noqa: E402
from cct.keras_reference import build_keras_cct  # noqa: E402
from cct.training import load_checkpoint  # noqa: E402


def test_keras_model_and_cct_keras_agree():
    keras_model = _random_keras_model(0)  # every tensor random, biases and norms included
    assert keras_model.count_params() == 416_331
    rng = np.random.default_rng(0)
    model = cct.create_model("cct_keras").eval()
    model.load_state_dict(state_dict_from_keras_weights(model, [w.numpy() for w in keras_model.trainable_weights]))

    images = rng.random((16, 32, 32, 3)).astype("float32")
    expected = np.asarray(keras_model(images * 255, training=False))  # the Keras model rescales pixels itself
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    assert np.abs(expected).max() > 0.1
    assert np.abs(logits - expected).max() <= 1e-4
    assert (logits.argmax(1) == expected.argmax(1)).all()


def _random_keras_model(seed=0):
    keras_model = build_keras_cct()
    rng = np.random.default_rng(seed)
    for weight in keras_model.weights:
        weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))
    return keras_model


def test_convert_keras_files_through_the_cli(tmp_path):
    keras_model = _random_keras_model(1)
    keras_model.save(tmp_path / "seed.keras")
    keras_model.save_weights(tmp_path / "seed.weights.h5")
    images = np.random.default_rng(2).random((8, 32, 32, 3)).astype("float32")
    expected = np.asarray(keras_model(images * 255, training=False))
    for name in ("seed.keras", "seed.weights.h5"):
        out = tmp_path / f"{name}.safetensors"
        assert main(["convert-keras", str(tmp_path / name), "--out", str(out)]) == 0
        model, header = load_checkpoint(out)
        assert header["info"]["source"].endswith(name) and model.config.class_names[0] == "airplane"
        with torch.no_grad():
            logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
        assert np.abs(logits - expected).max() <= 1e-4


def test_convert_keras_with_neither_tensorflow_nor_a_named_backend(tmp_path):
    # Keras 3 falls back to TensorFlow: with `pip install keras` alone, `cct convert-keras` said to install keras
    keras_model = _random_keras_model(3)
    keras_model.save_weights(tmp_path / "seed.weights.h5")
    command = ["convert-keras", str(tmp_path / "seed.weights.h5"), "--out", str(tmp_path / "seed.safetensors")]
    script = f"import sys; sys.modules['tensorflow'] = None; from cct.cli import main; sys.exit(main({command!r}))"
    environment = {name: value for name, value in os.environ.items() if name != "KERAS_BACKEND"}
    subprocess.run([sys.executable, "-c", script], env=environment, check=True)
    model, _ = load_checkpoint(tmp_path / "seed.safetensors")
    expected = state_dict_from_keras_weights(model, [w.numpy() for w in keras_model.trainable_weights])
    assert all(torch.equal(model.state_dict()[name], weight) for name, weight in expected.items())


def test_convert_keras_refuses_other_files(tmp_path, capsys):
    (tmp_path / "other.weights.h5").write_bytes(b"not hdf5 at all")
    assert main(["convert-keras", str(tmp_path / "other.weights.h5"), "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "other.weights.h5: not the weights of the seed Keras CCT" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    # --out names the checkpoint: another kind of name (here the Keras file itself) is refused, the file kept
    assert main(["convert-keras", str(tmp_path / "other.weights.h5"), "--out", str(tmp_path / "other.weights.h5")]) == 1
    assert capsys.readouterr().err.endswith(": this writes a .safetensors file; give --out a name ending in "
                                            ".safetensors\n")
    assert (tmp_path / "other.weights.h5").read_bytes() == b"not hdf5 at all"
