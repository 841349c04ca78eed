import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import cct
from cct.cli import main
from cct.training import save_checkpoint


@pytest.mark.parametrize("name", ["cct_keras", "cct_7_3x1_32_sine", "vit_lite_7_4_32"])
def test_onnx_export_matches_pytorch_at_any_batch_size(tmp_path, name, capfd):
    torch.manual_seed(0)
    model = cct.create_model(name, class_names=tuple("abcdefghij")).eval()
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", model)
    assert main(["export", "-c", str(checkpoint), "--format", "onnx"]) == 0
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
