"""Export a trained model for deployment: ONNX with a dynamic batch size."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import torch

from .errors import CCTError
from .files import atomic_write
from .models import CCT

ONNX_OPSET = 18


def export_onnx(model: CCT, out: str | Path) -> Path:
    """Write `model` as ONNX: input "images" float (batch, in_chans, S, S) in [0, 1], output "logits" (batch,
    classes); the batch dimension is dynamic. The class names are stored in the file's metadata."""
    try:
        import onnx
    except ImportError as e:
        raise CCTError("ONNX export needs the onnx and onnxscript packages (pip install onnx onnxscript)") from e
    c = model.config
    model = model.float().eval().cpu()
    example = torch.rand(2, c.in_chans, c.img_size, c.img_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # the exporter's own chatter: its progress, that torchvision's detection ops (which no CCT uses) are not
    # registered, and a deprecation inside torch.export
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        staged = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (example,), staged, input_names=["images"], output_names=["logits"],
                          dynamic_shapes={"x": {0: batch}}, opset_version=ONNX_OPSET, dynamo=True,
                          external_data=False, verbose=False)
        proto = onnx.load(staged)
    onnx.helper.set_model_props(proto, {"cct_model": c.name, "class_names": "\n".join(c.class_names)})
    out = Path(out)
    atomic_write(out, proto.SerializeToString())
    return out
