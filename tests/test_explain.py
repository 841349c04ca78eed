import pytest
import torch
from PIL import Image

import cct
from cct.cli import main
from cct.explain import pooling_map
from cct.runtime import Runtime
from cct.training import save_checkpoint
from tests.helpers import write_image


@pytest.mark.parametrize("name,grid", [("cct_keras", 8), ("cct_7_3x1_32", 16), ("cvt_7_4_32", 8)])
def test_pooling_map_is_a_distribution_over_the_token_grid(name, grid):
    torch.manual_seed(0)
    classifier = cct.Classifier(cct.create_model(name))
    seen, weights = pooling_map(classifier, torch.rand(3, 50, 40))
    assert seen.shape == (3, 32, 32) and seen.dtype == torch.uint8
    assert weights.shape == (grid, grid)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5) and (weights > 0).all()


def test_pooling_map_after_predictions_is_the_eval_mode_map():
    # as the web page asks for them: a prediction through the prepared (frozen, fused) model, then the map
    torch.manual_seed(0)
    classifier = cct.Classifier(cct.create_model("cct_keras"), Runtime(device="cpu").resolve())
    image = torch.rand(3, 32, 32)
    _, before = pooling_map(classifier, image)
    classifier.predict(image)
    assert not classifier.model.training
    _, after = pooling_map(classifier, image)
    assert torch.equal(after, before)


def test_class_token_models_have_nothing_to_show():
    with pytest.raises(cct.CCTError, match="class token"):
        pooling_map(cct.Classifier(cct.create_model("vit_lite_7_4_32")), torch.rand(3, 32, 32))


def test_explain_writes_a_png(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "m.safetensors",
                                 cct.create_model("cct_keras", class_names=tuple("abcdefghij")))
    image = write_image(tmp_path / "photo.jpg", (120, 90))
    out = tmp_path / "explained.png"
    assert main(["explain", "-c", str(checkpoint), str(image), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert Image.open(out).size[0] >= 800
    # any other name is a folder (it wrote a PNG named "maps", or over a checkpoint named with --out)
    assert main(["explain", "-c", str(checkpoint), str(image), "--out", str(tmp_path / "maps")]) == 0
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["photo.explain.png"]
    # a .png for several images, or a folder of them, was made a folder named like a PNG
    for images in ([str(image), str(image)], [str(tmp_path / "maps")]):
        assert main(["explain", "-c", str(checkpoint), *images, "--out", str(tmp_path / "all.png")]) == 1
        assert capsys.readouterr().err == f"cct: error: --out {tmp_path / 'all.png'}: one .png for several images; " \
                                          "give a folder\n"
    assert not (tmp_path / "all.png").exists()
    # another image's name was made a folder: `--out map.jpg` wrote map.jpg/photo.explain.png
    assert main(["explain", "-c", str(checkpoint), str(image), "--out", str(tmp_path / "map.jpg")]) == 1
    assert capsys.readouterr().err == f"cct: error: --out {tmp_path / 'map.jpg'}: explain writes PNG images; give " \
                                      "a name ending in .png for one image, or a folder\n"
    assert not (tmp_path / "map.jpg").exists()


def test_explain_takes_several_images_and_folders_into_a_folder(tmp_path, capsys):
    # `cct explain a.jpg b.jpg` was a usage error: it took one image
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", cct.create_model("cct_2_3x2_32"))
    photos = tmp_path / "photos"
    for name in ("a.jpg", "deeper/b.png"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(photos / name, (40, 30))
    (photos / "broken.png").write_bytes(b"not a png")
    single = write_image(tmp_path / "c.webp", (50, 50))
    out = tmp_path / "explained"
    assert main(["explain", "-c", str(checkpoint), str(photos), str(single), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a.explain.png", "c.explain.png", "deeper/b.explain.png"]
    assert all(Image.open(out / name).size[0] >= 800 for name in written)
    assert captured.out.splitlines() == [f"{photos / 'a.jpg'} -> {out / 'a.explain.png'}",
                                         f"{photos / 'deeper/b.png'} -> {out / 'deeper/b.explain.png'}",
                                         f"{single} -> {out / 'c.explain.png'}"]
    assert captured.err.strip() == f"cct: error: {photos / 'broken.png'}: not a readable image (UnidentifiedImageError)"

    # a folder's images keep their subfolders: a class-folder test set was refused as "would both be explained in
    # 1.explain.png"
    for name in ("cats/1.png", "dogs/1.png"):
        (tmp_path / "classes" / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / "classes" / name, (40, 30))
    assert main(["explain", "-c", str(checkpoint), str(tmp_path / "classes"), "--out", str(tmp_path / "maps")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path / 'classes' / name} -> {tmp_path / 'maps' / name.replace('.png', '.explain.png')}"
        for name in ("cats/1.png", "dogs/1.png")]
    assert sorted(str(p.relative_to(tmp_path / "maps")) for p in (tmp_path / "maps").rglob("*.png")) == [
        "cats/1.explain.png", "dogs/1.explain.png"]
    write_image(photos / "a.png", (40, 30))
    assert main(["explain", "-c", str(checkpoint), str(photos), "--out", str(tmp_path / "more")]) == 1
    assert capsys.readouterr().err.strip() == \
        f"cct: error: {photos / 'a.jpg'} and {photos / 'a.png'} would both be explained in " \
        f"{tmp_path / 'more/a.explain.png'}; explain them apart"
    assert not (tmp_path / "more").exists()
