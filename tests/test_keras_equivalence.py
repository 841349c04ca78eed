"""cct_keras is the keras.io CCT exactly: the same model built with Keras 3, given random weights, mapped
onto cct_keras, gives the same logits."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import cct  # noqa: E402
from cct.convert import state_dict_from_keras_weights  # noqa: E402
from cct.keras_reference import build_keras_cct  # noqa: E402


def test_keras_model_and_cct_keras_agree():
    keras_model = build_keras_cct()
    assert keras_model.count_params() == 416_331
    rng = np.random.default_rng(0)
    for weight in keras_model.weights:  # every tensor random, biases and norms included
        weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))
    model = cct.create_model("cct_keras").eval()
    model.load_state_dict(state_dict_from_keras_weights(model, [w.numpy() for w in keras_model.weights]))

    images = rng.random((16, 32, 32, 3)).astype("float32")
    expected = np.asarray(keras_model(images, training=False))
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    assert np.abs(expected).max() > 0.1
    assert np.abs(logits - expected).max() <= 1e-4
    assert (logits.argmax(1) == expected.argmax(1)).all()
