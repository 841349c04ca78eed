import json
import shutil

import pytest
import torch

import cct
from cct.cli import DEFAULT_MODEL, _read_images, main
from cct.inference import Classifier
from cct.training import load_checkpoint, save_checkpoint
from tests.conftest import write_cifar10_archive
from tests.helpers import write_image


def _fails_with(argv, capsys, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cct: error: ") and message in err
    assert len(err.splitlines()) == 1


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = cct.create_model("cct_2_3x2_32", class_names=tuple("abcdefghij"))
    return save_checkpoint(tmp_path / "model.safetensors", model, {"dataset": "cifar10"})


def test_models_lists_names_parameters_and_macs(capsys):
    assert main(["models", "cct_2_*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "params", "MACs"]
    assert lines[-1] == "also named: cct_keras = cct_2_3x2_32_keras"  # the name the README's commands use
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert set(rows) == {"cct_2_3x2_32", "cct_2_3x2_32_keras", "cct_2_3x2_32_sine"}
    assert rows["cct_2_3x2_32_keras"][1] == "416,331" and rows["cct_2_3x2_32"][2] == "0.033G"
    assert main(["models", "cct_keras"]) == 0  # an alias: the model it names (it printed an empty table)
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]] == ["cct_2_3x2_32_keras"]
    # part of a name finds the models that hold it (it matched none: a pattern without wildcards is a whole name)
    assert main(["models", "lite"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["vit_lite_6_4_32",
                                                                                    "vit_lite_7_4_32"]
    assert main(["models", "cct_99*"]) == 1  # it printed the header of an empty table
    assert capsys.readouterr().err == "cct: error: no model matches 'cct_99*' (`cct models` lists them all)\n"
    assert main(["models", "--pretrained"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert [(row[0], row[6]) for row in rows] == [("cct_2_3x2_32_keras", "(77.30%)"), ("cct_4_3x2_32", "(86.51%)")]
    assert main(["models", "cct_7*", "--pretrained"]) == 1
    assert "no model with bundled weights matches 'cct_7*'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out == f"cct {cct.__version__}\n"


def test_predict_prints_top_k_for_any_image(tmp_path, checkpoint, capsys):
    images = [write_image(tmp_path / "gray.jpg", (200, 120), "L"), write_image(tmp_path / "pal.png", (16, 16), "P"),
              write_image(tmp_path / "rgba.png", (33, 31), "RGBA")]
    assert main(["predict", "-c", str(checkpoint), *map(str, images), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 4
    assert lines[0] == str(images[0])
    probabilities = [float(line.split("%")[0]) for line in lines[1:4]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100.01
    assert lines[1].split()[-1] in "abcdefghij"


def test_predict_takes_folders_of_images(tmp_path, checkpoint, capsys):
    # a folder was "not a readable image (IsADirectoryError)"
    (tmp_path / "photos" / "deeper").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "deeper/c.webp", "deeper/d.avif", ".hidden.png"):  # AVIF was left out
        write_image(tmp_path / "photos" / name, (40, 30))
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    folders = [str(tmp_path / "photos"), str(tmp_path / "empty")]
    assert main(["predict", "-c", str(checkpoint), *folders, "--top-k", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[::2] == [str(tmp_path / "photos" / n)
                                              for n in ("a.jpg", "b.png", "deeper/c.webp", "deeper/d.avif")]
    assert captured.err.strip() == f"cct: error: {tmp_path / 'empty'}: a folder without images (.avif, .bmp, .gif, " \
                                   ".jpeg, .jpg, .png, .tif, .tiff, .webp)"


def test_predict_answers_a_large_folder_in_order_as_one_json_list_and_takes_images_after_options(
        tmp_path, checkpoint, capsys):
    # a folder is read in parts of 256 files (on every core), each part answered before the next is read, so its
    # answers come as they are made
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [write_image(photos / f"{i:03d}.png", (12, 9), seed=i).name for i in range(300)]
    (photos / "150.5.png").write_bytes(b"broken")
    single = write_image(tmp_path / "single.png", (20, 20), seed=7)
    # images after an option were "unrecognized arguments"
    assert main(["predict", "-c", str(checkpoint), str(photos), "--json", str(single), "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    answers = json.loads(captured.out)
    assert [a["image"] for a in answers] == [str(photos / n) for n in names] + [str(single)]
    expected = Classifier.from_pretrained(checkpoint).predict([str(photos / names[299]), str(single)], top_k=2)
    assert [a["labels"] for a in answers[-2:]] == [p.labels for p in expected]
    assert [a["probabilities"] for a in answers[-2:]] == [pytest.approx(p.probabilities) for p in expected]
    assert captured.err == f"cct: error: {photos / '150.5.png'}: not a readable image (UnidentifiedImageError)\n"
    assert main(["predict", "-c", str(checkpoint), str(photos / "150.5.png"), "--json"]) == 1
    assert capsys.readouterr().out == "[]\n"
    failures = []
    parts = _read_images(sorted(map(str, photos.iterdir())), Classifier.from_pretrained(checkpoint), failures)
    assert [len(part) for part in parts] == [255, 45] and len(failures) == 1  # 256 files, one broken; 45


@pytest.mark.parametrize("argv, message", [
    (["predict", "x.png", "--top-k", "0"], "argument --top-k: expected an integer of at least 1, got '0'"),
    (["serve", "--port", "99999"], "argument --port: expected an integer from 0 to 65535, got '99999'"),
    (["serve", "--max-concurrent", "0"], "argument --max-concurrent: expected an integer of at least 1, got '0'"),
    (["train", "--threads", "two"], "argument --threads: expected an integer of at least 1, got 'two'"),
    (["train", "--checkpoint-every", "-3"], "argument --checkpoint-every: expected an integer of at least 0, got '-3'"),
    # the usage printed above the message was cct's, without the command's options (-c among them)
    (["evaluate", "runs/seed"], "unrecognized arguments: runs/seed"),
    (["predict", "a.png", "--tpo-k", "3"], "unrecognized arguments: --tpo-k 3"),
])
def test_a_bad_argument_is_a_usage_error_of_its_command(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"usage: cct {argv[0]} [-h]") and err[-1] == f"cct {argv[0]}: error: {message}"


def test_unknown_model_fails_before_touching_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fails_with(["train", "--model", "resnet50"], capsys, "unknown model 'resnet50'")
    assert list(tmp_path.iterdir()) == []


def test_unknown_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fails_with(["train", "--recipe", "fastest"], capsys, "unknown recipe 'fastest'")
    assert list(tmp_path.iterdir()) == []


def test_bad_model_args_fail_before_touching_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fails_with(["train", "--model-arg", "num_classes=3"], capsys,
                "model config num_classes: set by the dataset, not by --model-arg")
    _fails_with(["train", "--model-arg", "img_size=64"], capsys,
                "model config img_size: set by the dataset, not by --model-arg")  # CIFAR's images are 32 x 32
    _fails_with(["train", "--model-arg", "style=x"], capsys, 'model config field style: expected "paper" or "keras"')
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset(tmp_path, capsys):
    # each was "unknown dataset 'X': not one of cifar10, cifar100 and not a folder with train/ and test/ ..."
    for name in (str(tmp_path / "nope"), "cifar-10"):
        _fails_with(["train", "--dataset", name], capsys, f"{name}: no such folder, nor a dataset name (cifar10, "
                    "cifar100)")
    (tmp_path / "empty").mkdir()
    _fails_with(["train", "--dataset", str(tmp_path / "empty")], capsys, f"{tmp_path / 'empty'}: not a dataset folder "
                f"(expected {tmp_path / 'empty'}/train/<class>/<image> and {tmp_path / 'empty'}/test/<class>/<image>)")
    (tmp_path / "photos" / "cats").mkdir(parents=True)  # class folders, but no train/ and test/
    _fails_with(["train", "--dataset", str(tmp_path / "photos")], capsys, f"{tmp_path / 'photos'}: a folder of class "
                "folders, without train/ and test/: hold a share of each class's images out as test/<class>/")
    (tmp_path / "photos" / "train").mkdir()
    _fails_with(["train", "--dataset", str(tmp_path / "photos")], capsys, f"{tmp_path / 'photos'}: no test/ folder "
                f"beside its train/ (expected {tmp_path / 'photos'}/test/<class>/<image>)")


def test_corrupt_dataset_archive(tmp_path, capsys):
    write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=4)  # not the official md5
    _fails_with(["train", "--data-dir", str(tmp_path)], capsys, "cifar-10-python.tar.gz: md5")


def test_corrupt_checkpoint(tmp_path, checkpoint, capsys):
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    _fails_with(["predict", "-c", str(checkpoint), str(write_image(tmp_path / "x.png", (32, 32)))], capsys,
                "model.safetensors: not a readable checkpoint")


def test_missing_checkpoint(tmp_path, capsys):
    _fails_with(["evaluate", "-c", str(tmp_path / "run")], capsys, "no such checkpoint")
    # a folder that is not a run (a dataset given by mistake) said "photos/best.safetensors: no such checkpoint"
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    _fails_with(["evaluate", "-c", str(tmp_path / "photos")], capsys,
                f"{tmp_path / 'photos'}: a folder without a checkpoint (a run folder holds best.safetensors once its "
                "first epoch has ended, a card folder model.safetensors)")


def test_a_file_that_is_not_an_image(tmp_path, checkpoint, capsys):
    (tmp_path / "photo.jpg").write_text("just text")
    _fails_with(["predict", "-c", str(checkpoint), str(tmp_path / "photo.jpg")], capsys, "photo.jpg: not a readable image")
    _fails_with(["predict", "-c", str(checkpoint), str(tmp_path / "absent.png")], capsys, "absent.png: no such file")
    _fails_with(["predict", "-c", str(checkpoint), "https://example.com/cat.jpg"], capsys,
                "https://example.com/cat.jpg: no such file (web addresses are not fetched: download the image, then "
                "give its file)")


def test_evaluate_with_a_dataset_of_other_classes(tmp_path, checkpoint, capsys):
    from tests.helpers import write_color_dataset

    data = write_color_dataset(tmp_path / "colors", per_class=2)
    _fails_with(["evaluate", "-c", str(checkpoint), "--dataset", str(data)], capsys, "the model has 10 classes")
    # as many classes under other names: evaluated as if class i were class i ("top-1 33%", per class nonsense)
    two = save_checkpoint(tmp_path / "two.safetensors", cct.create_model("cct_2_3x2_32", num_classes=2,
                                                                         class_names=("blue", "green")))
    _fails_with(["evaluate", "-c", str(two), "--dataset", str(data)], capsys,
                f"the model's classes are not {data}'s (class 1: the model's 'green', {data}'s 'red')")
    same = save_checkpoint(tmp_path / "same.safetensors", cct.create_model("cct_2_3x2_32", num_classes=2,
                                                                           class_names=("blue", "red")),
                           {"dataset": str(tmp_path / "moved-away")})
    assert main(["evaluate", "-c", str(same), "--dataset", str(data)]) == 0
    # some of the model's classes, by name: scored as the model's (it was "the model has 3 classes, ... has 2")
    more = save_checkpoint(tmp_path / "more.safetensors", cct.create_model("cct_2_3x2_32", num_classes=3,
                                                                           class_names=("blue", "green", "red")))
    capsys.readouterr()
    assert main(["evaluate", "-c", str(more), "--dataset", str(data), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 4 and printed["per_class"]["green"] is None
    assert [sum(row) for row in printed["confusion"]] == [2, 0, 2]  # the true blues and reds in their rows
    _fails_with(["evaluate", "-c", str(same)], capsys, f"{tmp_path / 'moved-away'}: no such folder, the dataset "
                f"{same} was trained on (moved? give its new place with --dataset)")


def test_python_m_cct_runs_the_cli():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "cct", "models", "cvt_7*"], capture_output=True, text=True)
    assert result.returncode == 0 and "cvt_7_4_32" in result.stdout
    result = subprocess.run([sys.executable, "-m", "cct", "predict"], capture_output=True, text=True)
    assert result.returncode == 2 and "the following arguments are required" in result.stderr


def test_a_closed_pipe_ends_quietly():
    # `cct models | head` ended with a BrokenPipeError traceback
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "cct", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes its first line
    assert process.wait(timeout=120) == 1
    assert process.stderr.read() == b""


def test_evaluate_names_the_confusion_matrix_of_a_folder_dataset_after_the_folder(tmp_path, monkeypatch, capsys):
    # `cct evaluate --dataset ./photos/` wrote "cct_4_3x2_32-./photos/-confusion.png": into new folders
    # "cct_4_3x2_32-." and "cct_4_3x2_32-./photos"
    monkeypatch.chdir(tmp_path)
    for split in ("train", "test"):
        for i, name in enumerate(cct.from_pretrained(DEFAULT_MODEL).config.class_names):
            (tmp_path / "photos" / split / name).mkdir(parents=True)
            write_image(tmp_path / "photos" / split / name / "0.png", (32, 32), seed=i)
    assert main(["evaluate", "--dataset", "./photos/"]) == 0
    assert capsys.readouterr().out.endswith(f"confusion matrix: {DEFAULT_MODEL}-photos-confusion.png\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{DEFAULT_MODEL}-photos-confusion.png", "photos"]


def test_json_output_keeps_class_names_and_paths_as_written(tmp_path, capsys):
    # they came as escapes: "\\u732b" for 猫
    names = ("猫", "犬", "Äpfel")
    path = save_checkpoint(tmp_path / "m.safetensors", cct.create_model("cct_2_3x2_32", num_classes=3,
                                                                         class_names=names))
    image = write_image(tmp_path / "写真.png", (32, 32))
    assert main(["predict", "-c", str(path), str(image), "--top-k", "3", "--json"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)[0]["image"] == str(image) and sorted(json.loads(printed)[0]["labels"]) == sorted(names)
    assert all(f'"{name}"' in printed for name in names) and "写真.png" in printed


def test_evaluate_aligns_its_table_to_the_longest_class_name(tmp_path, capsys):
    # names over 15 characters pushed their accuracy out of the column
    from tests.helpers import write_color_dataset

    data = write_color_dataset(tmp_path / "colors", per_class=2)
    (data / "train" / "blue").rename(data / "train" / "blue_green_and_turquoise")
    (data / "test" / "blue").rename(data / "test" / "blue_green_and_turquoise")
    path = save_checkpoint(tmp_path / "m.safetensors", cct.create_model(
        "cct_2_3x2_32", num_classes=2, class_names=("blue_green_and_turquoise", "red")))
    assert main(["evaluate", "-c", str(path), "--dataset", str(data)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(rows) == 2 and len(rows[0]) == len(rows[1]) and rows[0].endswith("%") and rows[1].endswith("%")
    assert rows[0].startswith("  blue_green_and_turquoise  ") and rows[1].startswith("  red  ")


def test_evaluate_prints_json_with_the_confusion_matrix(tmp_path, capsys):
    from cct.evaluation import evaluate_saved
    from cct.data import load_dataset
    from tests.helpers import write_color_dataset

    data = write_color_dataset(tmp_path / "colors", per_class=6)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "m.safetensors", cct.create_model("cct_2_3x2_32", num_classes=2,
                                                                         class_names=("blue", "red")))
    assert main(["evaluate", "-c", str(path), "--dataset", str(data), "--json"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out)
    assert f'"confusion": [\n    {printed["confusion"][0]},\n    {printed["confusion"][1]}\n  ],' in out  # a row a line
    model, header = load_checkpoint(path)
    expected = evaluate_saved(model, header, load_dataset(str(data), "data", 32, 3, splits=("test",))[0])
    assert printed["images"] == 12 and printed["top1"] == pytest.approx(expected.top1)
    assert printed["per_class"] == pytest.approx(dict(zip(("blue", "red"), expected.per_class)))
    assert printed["confusion"] == expected.confusion.tolist() and sum(map(sum, printed["confusion"])) == 12
    assert printed["confusion_png"] == str(tmp_path / "m-colors-confusion.png")
    # another dataset's matrix goes beside it (it overwrote the first)
    shutil.copytree(data, tmp_path / "colors-copy")
    assert main(["evaluate", "-c", str(path), "--dataset", str(tmp_path / "colors-copy")]) == 0
    assert capsys.readouterr().out.endswith(f"confusion matrix: {tmp_path / 'm-colors-copy-confusion.png'}\n")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["m-colors-confusion.png", "m-colors-copy-confusion.png"]
    figure = tmp_path / "figures" / "new" / "cm.png"  # --out in a folder not made yet, as explain's (it failed)
    assert main(["evaluate", "-c", str(path), "--dataset", str(data), "--out", str(figure)]) == 0
    assert capsys.readouterr().out.endswith(f"confusion matrix: {figure}\n") and figure.is_file()
    assert main(["evaluate", "-c", str(path), "--dataset", str(data), "--out", str(tmp_path / "cm.jpg")]) == 1
    assert capsys.readouterr().err.endswith("cm.jpg: this writes a .png file; give --out a name ending in .png\n")
