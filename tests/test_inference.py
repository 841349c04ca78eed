import numpy as np
import pytest
import torch
from PIL import Image

import cct
from cct.training import save_checkpoint


@pytest.fixture
def classifier(tmp_path):
    torch.manual_seed(0)
    model = cct.create_model("cct_2_3x2_32", class_names=tuple("abcdefghij"))
    return cct.Classifier.from_pretrained(save_checkpoint(tmp_path / "m.safetensors", model))


def test_every_kind_of_input_gives_the_same_prediction(tmp_path, classifier):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    expected = classifier.predict(str(tmp_path / "x.png"), top_k=3)
    assert len(expected.labels) == 3 and expected.labels[0] in "abcdefghij"
    assert expected.probabilities == sorted(expected.probabilities, reverse=True)
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    for item in (tmp_path / "x.png", (tmp_path / "x.png").read_bytes(), Image.fromarray(pixels), pixels,
                 pixels / np.float32(255), chw, chw.float() / 255, (chw.float() / 255).bfloat16()):
        got = classifier.predict(item, top_k=3)
        assert got.labels == expected.labels
        assert got.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
    batch = classifier.predict(np.stack([pixels, pixels[::-1]]), top_k=3)
    assert len(batch) == 2 and batch[0].labels == expected.labels
    listed = classifier.predict([tmp_path / "x.png", chw.unsqueeze(0)[0]], top_k=3)
    assert [p.labels for p in listed] == [expected.labels, expected.labels]


def test_a_classifier_shows_its_model_classes_and_runtime(classifier):
    assert repr(classifier) == ("Classifier(cct_2_3x2_32, 10 classes: a, b, c, d, e, f, g, h, i, j; "
                                f"{classifier.runtime.describe()})")
    assert classifier.runtime.describe().startswith("cpu fp32, ")  # and the thread count
    many = cct.Classifier(cct.create_model("cct_2_3x2_32", num_classes=12))
    assert repr(many) == "Classifier(cct_2_3x2_32, 12 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more; the model as given)"


def test_probabilities_over_all_classes_sum_to_one(classifier):
    prediction = classifier.predict(torch.rand(3, 40, 50), top_k=10)
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert sorted(prediction.labels) == list("abcdefghij")


def test_bad_inputs_are_clear_errors(classifier):
    with pytest.raises(cct.CCTError, match=r"must be uint8 or float in \[0, 1\], \(H, W\) or \(H, W, C\) with 1, 3 or 4 "
                                           r"channels, got int32"):
        classifier.predict(np.zeros((32, 32, 3), dtype=np.int32))
    with pytest.raises(cct.CCTError, match=r"with 1, 3 or 4 channels, got uint8 \(32, 32, 5\)"):  # PIL's TypeError
        classifier.predict(np.zeros((32, 32, 5), dtype=np.uint8))
    with pytest.raises(cct.CCTError, match=r"must be \(C, H, W\)"):
        classifier.predict(torch.zeros(7, 32, 32))
    with pytest.raises(cct.CCTError, match=r"a float image must hold values in \[0, 1\], got 0 to 255 \(divide"):
        classifier.predict(torch.linspace(0, 255, 3 * 32 * 32).view(3, 32, 32))
    with pytest.raises(cct.CCTError, match=r"got -0.5 to 0.5"):
        classifier.predict(torch.linspace(-0.5, 0.5, 3 * 32 * 32).view(3, 32, 32).numpy())
    with pytest.raises(cct.CCTError, match=r"the image bytes: not a readable image \(UnidentifiedImageError\)"):
        classifier.predict(b"GIF89a but not an image")
    for empty in (np.zeros((0, 0, 3), dtype=np.uint8), torch.zeros(3, 0, 32), Image.new("RGB", (32, 0))):
        # predicted a class (the model's answer for an all-black image)
        with pytest.raises(cct.CCTError, match=r"an empty image \(\d+ x \d+ pixels\): nothing to classify"):
            classifier.predict(empty)
    with pytest.raises(cct.CCTError, match="cannot read an image from dict"):
        classifier.predict({"not": "an image"})
    with pytest.raises(cct.CCTError, match="top_k must be an integer of at least 1, got 0"):
        classifier.predict(torch.rand(3, 32, 32), top_k=0)
    # it was torch's "topk(): argument 'k' (position 1) must be int, not float"
    with pytest.raises(cct.CCTError, match="top_k must be an integer of at least 1, got 2.5"):
        classifier.predict(torch.rand(3, 32, 32), top_k=2.5)
    assert len(classifier.predict(torch.rand(3, 32, 32), top_k=np.int64(3)).labels) == 3  # numpy's count too


def test_an_empty_list_or_batch_gives_no_predictions(classifier):
    assert classifier.predict([]) == []
    assert classifier.predict(np.zeros((0, 32, 32, 3), dtype=np.uint8)) == []
    assert classifier.predict(torch.zeros(0, 3, 32, 32)) == []
