import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import cct
from cct.cli import main
from cct.training import save_checkpoint


@pytest.mark.parametrize("name", ["cct_keras", "cct_7_3x1_32_sine", "vit_lite_7_4_32"])
def test_onnx_export_matches_pytorch_at_any_batch_size(tmp_path, name, capfd):
    torch.manual_seed(0)
    model = cct.create_model(name, class_names=tuple("abcdefghij")).eval()
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", model)
    assert main(["export", "-c", str(checkpoint)]) == 0
    out = tmp_path / "m.onnx"
    printed = capfd.readouterr()
    assert (printed.out, printed.err) == (f"{checkpoint} -> {out}\n", "")  # none of the exporter's chatter
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props["cct_model"] == model.config.name and props["class_names"].split("\n")[0] == "a"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 64):
        images = torch.rand(batch, 3, 32, 32)
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images).numpy()
        assert logits.shape == (batch, 10)
        assert np.abs(logits - expected).max() <= 1e-4


def test_export_to_a_folder_not_made_yet_makes_it(tmp_path, capsys):
    # it exported, then failed to write: "exports/m.onnx: cannot write (No such file or directory)"
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", cct.create_model("cct_keras"))
    out = tmp_path / "exports" / "m.onnx"
    assert main(["export", "-c", str(checkpoint), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{checkpoint} -> {out}\n" and len(onnx.load(out).graph.node) > 10
    # a name of another kind is refused before anything is written: it overwrote a checkpoint with ONNX
    before = checkpoint.read_bytes()
    assert main(["export", "-c", str(checkpoint), "--out", str(checkpoint)]) == 1
    assert capsys.readouterr().err == f"cct: error: {checkpoint}: this writes a .onnx file; give --out a name " \
                                      "ending in .onnx\n"
    assert checkpoint.read_bytes() == before


def test_the_readmes_onnx_snippet_gives_the_class_cct_predict_gives(tmp_path, capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = re.search(r"```python\n(import numpy as np\nimport onnxruntime\n.*?)```", readme, re.S).group(1)
    assert main(["export", "--out", str(tmp_path / "model.onnx")]) == 0
    capsys.readouterr()
    rng = np.random.default_rng(0)
    photos = []  # noise around a colour, a lighter top half: sea, grass, earth... the model tells some apart
    for i, (color, mode) in enumerate([((30, 80, 200), "RGB"), ((40, 160, 40), "RGBA"), ((220, 220, 220), "L"),
                                       ((150, 110, 60), "P"), ((200, 40, 40), "RGB")]):
        pixels = np.clip(np.array(color) + rng.normal(0, 25, (40, 48 + 8 * i, 3)), 0, 255)
        pixels[:20] = pixels[:20] * 0.6 + 100
        Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(tmp_path / f"photo{i}.png")
        photos.append(tmp_path / f"photo{i}.png")
    assert main(["predict", *map(str, photos), "--top-k", "1", "--json"]) == 0
    predicted = [p["labels"][0] for p in json.loads(capsys.readouterr().out)]
    assert len(set(predicted)) > 1  # the images tell the classes apart
    for photo, label in zip(photos, predicted):
        exec(snippet.replace("runs/seed/best.onnx", str(tmp_path / "model.onnx")).replace("photo.jpg", str(photo)), {})
        assert capsys.readouterr().out == f"{label}\n"
