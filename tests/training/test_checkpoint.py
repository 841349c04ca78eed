import json

import pytest
import torch
from safetensors.torch import save_file

import cct
from cct.export import export_onnx
from cct.files import atomic_write
from cct.training import load_checkpoint, save_checkpoint
from cct.training.checkpoint import tensors_sha256


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = cct.create_model("cct_2_3x2_32", num_classes=3, class_names=("a", "b", "c"))
    path = save_checkpoint(tmp_path / "best.safetensors", model, {"epoch": 7})
    return model, path


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    loaded, header = load_checkpoint(path)
    assert loaded.config == model.config
    assert header["info"] == {"epoch": 7}
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
    copy = json.loads(path.with_suffix(".json").read_text())
    assert copy["model"]["class_names"] == ["a", "b", "c"] and len(copy["sha256"]) == 64
    # a run folder and the JSON copy lead to the same checkpoint
    assert load_checkpoint(path.parent)[0].config == model.config
    assert load_checkpoint(path.with_suffix(".json"))[0].config == model.config
    # and so does the folder's config.json (it was read as "config.safetensors: no such checkpoint")
    (path.parent / "config.json").write_text("{}")
    assert load_checkpoint(path.parent / "config.json")[0].config == model.config


def test_truncated_checkpoint_is_refused(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(cct.CCTError, match="best.safetensors: not a readable checkpoint"):
        load_checkpoint(path)


def test_altered_weights_fail_the_checksum(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(cct.CCTError, match="checksum mismatch"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    small = cct.create_model("cct_2_3x2_32")
    tensors = {k: v.contiguous() for k, v in small.state_dict().items()}
    header = {"format": "cct-checkpoint/1", "model": cct.create_model("cct_4_3x2_32").config.to_dict(),
              "sha256": tensors_sha256(tensors), "info": {}}
    save_file(tensors, tmp_path / "x.safetensors", metadata={k: json.dumps(v) for k, v in header.items()})
    with pytest.raises(cct.CCTError, match="x.safetensors: weights do not match the model config"):
        load_checkpoint(tmp_path / "x.safetensors")


def test_a_checkpoint_with_a_bad_model_config_names_the_file_and_the_field(saved):
    model, path = saved
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    header = {"format": "cct-checkpoint/1", "model": {**model.config.to_dict(), "dropout": 1.5},
              "sha256": tensors_sha256(tensors), "info": {}}
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in header.items()})
    with pytest.raises(cct.CCTError, match=r"best.safetensors: not a valid model config \(model config field "
                                           r"dropout: expected a number in \[0, 1\), got 1.5\)$"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.safetensors").write_text("hello")
    with pytest.raises(cct.CCTError, match="notes.safetensors: not a readable checkpoint"):
        load_checkpoint(tmp_path / "notes.safetensors")
    with pytest.raises(cct.CCTError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")



def test_an_export_or_keras_file_passed_as_a_checkpoint_says_what_it_is(saved, tmp_path):
    # it was "not a readable checkpoint (truncated or corrupt: Error while deserializing header: header too large)"
    model, path = saved
    onnx = export_onnx(model, tmp_path / "model.onnx")
    with pytest.raises(cct.CCTError) as raised:
        cct.from_pretrained(onnx)
    assert str(raised.value) == f"{onnx}: not a checkpoint; cct reads .safetensors checkpoints, run folders and " \
                                "card folders (an ONNX export runs in onnxruntime)"
    (tmp_path / "seed.keras").write_bytes(b"PK\x03\x04")
    with pytest.raises(cct.CCTError, match=r"seed.keras: not a checkpoint; .* \(`cct convert-keras` imports"):
        load_checkpoint(tmp_path / "seed.keras")


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "best.json"
    target.write_text("good")
    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # neither bytes nor str: the write fails midway
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]


def test_written_files_get_the_permissions_the_umask_gives_new_files(umask, saved):
    # they were private (0600, tempfile's), so another user, a container or a web server could not read them
    _, path = saved
    assert [oct(p.stat().st_mode & 0o777) for p in (path, path.with_suffix(".json"))] == ["0o644", "0o644"]
    umask(0o027)
    atomic_write(path, "replaced")
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_a_path_that_cannot_be_written_is_a_clear_error_and_leaves_nothing(tmp_path):
    with pytest.raises(cct.CCTError, match=r"missing/best.json: cannot write \(No such file or directory\)$"):
        atomic_write(tmp_path / "missing" / "best.json", "data")
    (tmp_path / "taken").mkdir()
    with pytest.raises(cct.CCTError, match=r"taken: cannot write \(Is a directory\)$"):
        atomic_write(tmp_path / "taken", "data")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and not any((tmp_path / "taken").iterdir())
