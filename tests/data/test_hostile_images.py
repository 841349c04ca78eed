"""Odd and hostile image files: valid ones are read as their plain RGB equivalent, invalid ones get a clear
error naming the file, and nothing hangs or crashes (predict, evaluate and the folder dataset)."""

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import cct
from cct.cli import main
from cct.data import image_to_tensor, load_image, load_image_folder
from cct.data.images import open_image
from cct.errors import CCTError
from cct.training import save_checkpoint

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)


def rgb(size=32):
    return image_to_tensor(Image.fromarray(PIXELS), size)


def png(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


INVALID = {
    "empty.png": (b"", "not a readable image"),
    "text.png": (b"hello, I am text", "not a readable image"),
    "truncated.png": (png(Image.fromarray(PIXELS))[:300], "truncated or corrupt"),
    "truncated.jpg": (lambda: _jpeg()[:len(_jpeg()) // 2], "truncated or corrupt"),
    "bomb.png": (lambda: png(Image.new("1", (10_000, 10_000))), "100,000,000 pixels; the limit is 50,000,000"),
    # PIL's own DecompressionBombError came out as a traceback
    "bigger-bomb.png": (lambda: png(Image.new("1", (14_000, 13_000))), "over 178,956,970 pixels; the limit is "
                        "50,000,000"),
}


def _jpeg():
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_files_are_named_errors(tmp_path, name):
    data, message = INVALID[name]
    path = tmp_path / name
    path.write_bytes(data() if callable(data) else data)
    with pytest.raises(CCTError, match=f"{name}: .*{message}"):
        load_image(path, 32)


def test_modes_read_as_their_rgb_equivalent(tmp_path):
    image = Image.fromarray(PIXELS)
    cases = {"palette.png": image.quantize(256), "rgba.png": image.convert("RGBA"), "gray.png": image.convert("L"),
             "cmyk.tiff": image.convert("CMYK")}
    for name, variant in cases.items():
        variant.save(tmp_path / name)
        assert torch.equal(load_image(tmp_path / name, 32), image_to_tensor(variant.convert("RGB"), 32)), name
    # RGBA keeps the colour channels; a palette image keeps (nearly) the colours
    assert torch.equal(load_image(tmp_path / "rgba.png", 32), rgb())
    assert (load_image(tmp_path / "palette.png", 32).int() - rgb().int()).abs().float().mean() < 8


def test_16_bit_grayscale_keeps_its_top_8_bits(tmp_path):
    values = RNG.integers(0, 65536, (40, 48), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    expected = image_to_tensor(Image.fromarray((values >> 8).astype(np.uint8)), 32)
    assert torch.equal(load_image(tmp_path / "deep.png", 32), expected)


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(PIXELS).save(tmp_path / "rotated.png", exif=exif)
    upright = Image.fromarray(PIXELS).transpose(Image.Transpose.ROTATE_270)
    assert torch.equal(load_image(tmp_path / "rotated.png", 32), image_to_tensor(upright, 32))


def test_animated_gif_uses_its_first_frame(tmp_path):
    frames = [Image.fromarray(PIXELS).quantize(64), Image.new("P", (48, 40), 3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert torch.equal(load_image(tmp_path / "anim.gif", 32), image_to_tensor(frames[0].convert("RGB"), 32))


def test_a_large_jpeg_decodes_at_the_smallest_scale_that_covers_the_input(tmp_path):
    # a phone photo was decoded whole (12 megapixels: ~190 ms) to make a 32 x 32 input
    Image.fromarray(PIXELS).resize((1600, 1200), Image.Resampling.BICUBIC).save(tmp_path / "photo.jpg", quality=95)
    assert open_image(tmp_path / "photo.jpg").size == (1600, 1200)
    assert open_image(tmp_path / "photo.jpg", size=32).size == (200, 150)  # 1/8
    assert open_image(tmp_path / "photo.jpg", size=224).size == (400, 300)  # 1/4: 1/8 would be under 224
    for size in (32, 224):
        whole = image_to_tensor(open_image(tmp_path / "photo.jpg"), size).int()
        difference = (load_image(tmp_path / "photo.jpg", size).int() - whole).abs()
        assert difference.float().mean() < 1 and difference.max() <= 8, size


def test_predict_answers_every_good_file_and_names_each_bad_one(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", cct.create_model("cct_2_3x2_32"))
    Image.fromarray(PIXELS).save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(png(Image.new("1", (10_000, 10_000))))
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert main(["predict", "-c", str(checkpoint), str(tmp_path / "good.png"), str(tmp_path / "empty.png"),
                     str(tmp_path / "bomb.png"), "--json"]) == 1
    assert warned == []  # PIL's DecompressionBombWarning came before the bomb's one-line error
    captured = capsys.readouterr()
    assert [r["image"] for r in json.loads(captured.out)] == [str(tmp_path / "good.png")]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "empty.png: not a readable image" in errors[0] and "bomb.png" in errors[1]


def test_a_folder_with_unreadable_files_lists_them(tmp_path):
    (tmp_path / "cats").mkdir()
    Image.fromarray(PIXELS).save(tmp_path / "cats" / "ok.png")
    (tmp_path / "cats" / "a.png").write_bytes(b"")
    (tmp_path / "cats" / "b.jpg").write_bytes(_jpeg()[:len(_jpeg()) // 2])
    with pytest.raises(CCTError, match=r"2 unreadable images, fix or remove them: .*a.png: not a readable.*b.jpg: the image is trunc"):
        load_image_folder(tmp_path, 32)
