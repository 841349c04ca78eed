import os
import pickle
import re
import shutil
import socket
import tarfile
from dataclasses import replace

import pytest
import torch

import cct
from cct.cli import main
from cct.data import CIFAR, build_augmentation, load_cifar, load_dataset, load_image_folder
from cct.errors import CCTError
from cct.training import save_checkpoint
from tests.conftest import md5_of, write_cifar10_archive, write_cifar10_folder
from tests.helpers import write_image


def test_real_cifar10_from_the_extracted_folder(cifar10_dir):
    train, test = load_cifar("cifar10", cifar10_dir, download_missing=False)
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 3, 32, 32)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes[0] == "airplane" and train.classes[-1] == "truck"
    mean = train.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-4)


def test_download_from_the_official_layout_over_http(umask, tmp_path, http_server):
    www, url = http_server
    images, labels = write_cifar10_archive(www / "cifar-10-python.tar.gz")
    spec = replace(CIFAR["cifar10"], url=f"{url}/cifar-10-python.tar.gz", md5=md5_of(www / "cifar-10-python.tar.gz"))
    data_dir = tmp_path / "data"
    train, test = load_cifar("cifar10", data_dir, spec=spec)
    assert torch.equal(train.images, torch.from_numpy(images))
    assert train.labels.tolist() == labels.tolist()
    assert len(test) == 20
    assert (data_dir / "cifar-10-python.tar.gz").is_file() and (data_dir / "cifar-10-batches-py").is_dir()
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert oct((data_dir / "cifar-10-python.tar.gz").stat().st_mode & 0o777) == "0o644"  # not private to the user
    # a second load uses the extracted folder and downloads nothing
    (www / "cifar-10-python.tar.gz").unlink()
    assert torch.equal(load_cifar("cifar10", data_dir, spec=spec)[0].images, train.images)


def test_download_with_a_bad_md5_leaves_nothing_behind(tmp_path, http_server):
    www, url = http_server
    write_cifar10_archive(www / "cifar-10-python.tar.gz")
    spec = replace(CIFAR["cifar10"], url=f"{url}/cifar-10-python.tar.gz")  # the official md5: does not match
    data_dir = tmp_path / "data"
    with pytest.raises(CCTError, match="corrupt: md5"):
        load_cifar("cifar10", data_dir, spec=spec)
    assert list(data_dir.iterdir()) == []


def test_download_of_a_missing_file_is_a_clear_error(tmp_path, http_server):
    _, url = http_server
    spec = replace(CIFAR["cifar10"], url=f"{url}/nothing-here.tar.gz")
    with pytest.raises(CCTError, match="cannot download .*404"):
        load_cifar("cifar10", tmp_path, spec=spec)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_download_without_a_connection_says_where_to_put_the_file(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = replace(CIFAR["cifar10"], url=f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(CCTError, match=f"refused.* put it at {archive} and run again"):
        load_cifar("cifar10", tmp_path, spec=spec)
    assert list(tmp_path.iterdir()) == []


def test_official_archive_is_md5_checked_and_extracted(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    images, _ = write_cifar10_archive(archive, per_batch=8)
    spec = replace(CIFAR["cifar10"], md5=md5_of(archive))
    train, _ = load_cifar("cifar10", tmp_path, download_missing=False, spec=spec)
    assert torch.equal(train.images, torch.from_numpy(images))

    other = tmp_path / "other"
    other.mkdir()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (other / archive.name).write_bytes(bytes(data))
    with pytest.raises(CCTError, match="cifar-10-python.tar.gz: md5"):
        load_cifar("cifar10", other, download_missing=False, spec=spec)
    assert sorted(p.name for p in other.iterdir()) == ["cifar-10-python.tar.gz"]


def test_the_official_archive_extracts_on_a_python_without_tar_filters(tmp_path, monkeypatch):
    # tarfile before Python 3.10.12 and 3.11.4 (Debian 12's 3.11.2) has no `filter`: a TypeError's traceback
    # at the first CIFAR run
    if hasattr(tarfile, "data_filter"):  # this Python has them: take them away
        extractall = tarfile.TarFile.extractall

        def extractall_without_filters(self, path=".", members=None, *, numeric_owner=False):
            return extractall(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")

        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_without_filters)
        monkeypatch.delattr(tarfile, "data_filter")
    archive = tmp_path / "cifar-10-python.tar.gz"
    images, _ = write_cifar10_archive(archive, per_batch=8)
    spec = replace(CIFAR["cifar10"], md5=md5_of(archive))
    train, _ = load_cifar("cifar10", tmp_path, download_missing=False, spec=spec)
    assert torch.equal(train.images, torch.from_numpy(images))


def test_missing_data_without_download_names_the_folder(tmp_path):
    with pytest.raises(CCTError, match=f"{tmp_path}: no cifar-10-batches-py/"):
        load_cifar("cifar10", tmp_path, download_missing=False)


def test_a_data_folder_that_is_a_file_or_lies_below_one_is_a_clear_error(tmp_path, http_server):
    # both were tracebacks (FileExistsError, NotADirectoryError)
    _, url = http_server
    spec = replace(CIFAR["cifar10"], url=f"{url}/cifar-10-python.tar.gz")
    (tmp_path / "notes").write_text("a file")
    with pytest.raises(CCTError, match=f"^{tmp_path}/notes: a file, not a folder"):
        load_cifar("cifar10", tmp_path / "notes", spec=spec)
    with pytest.raises(CCTError, match=f"^{tmp_path}/notes/data: cannot write the download there \\(Not a directory"):
        load_cifar("cifar10", tmp_path / "notes" / "data", spec=spec)
    assert (tmp_path / "notes").read_text() == "a file"


def test_pickles_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Exploit()}))
    with pytest.raises(CCTError, match="batches.meta: not a valid CIFAR batch file .*refusing to load"):
        load_cifar("cifar10", tmp_path, download_missing=False)
    assert not marker.exists()


@pytest.mark.parametrize("numpy_module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_batches_pickled_by_numpy_1_or_2_load_under_either(tmp_path, numpy_module):
    # the official files name numpy.core, those numpy 2 writes (../shared's copy) numpy._core: numpy 1 refused
    # those ("No module named 'numpy._core'")
    images, _ = write_cifar10_folder(tmp_path, per_batch=4)
    for batch in (tmp_path / "cifar-10-batches-py").iterdir():
        batch.write_bytes(re.sub(rb"numpy\._?core\.multiarray\n", numpy_module + b"\n", batch.read_bytes()))
    assert numpy_module in (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    train, _ = load_cifar("cifar10", tmp_path, download_missing=False)
    assert torch.equal(train.images, torch.from_numpy(images))


def test_folder_dataset_converts_any_size_and_mode(tmp_path):
    for cls, specs in {"cats": [((40, 30), "RGB"), ((32, 32), "L")], "dogs": [((64, 64), "RGBA"), ((10, 50), "P")]}.items():
        (tmp_path / cls).mkdir()
        for i, (size, mode) in enumerate(specs):
            write_image(tmp_path / cls / f"{i}.png", size, mode, seed=i)
    (tmp_path / "dogs" / "notes.txt").write_text("not an image, and not named like one")
    (tmp_path / "dogs" / "more").mkdir()  # images below a class folder count for it (they were left out)
    write_image(tmp_path / "dogs" / "more" / "2.jpg", (20, 20))
    # hidden files and folders do not: macOS's resource forks, Jupyter's checkpoints (taken as a class)
    (tmp_path / "dogs" / "._2.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    write_image(tmp_path / ".ipynb_checkpoints" / "x.png", (20, 20))
    data = load_image_folder(tmp_path, 32)
    assert data.classes == ["cats", "dogs"]
    assert data.images.shape == (5, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    gray = data.images[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    one_channel = load_image_folder(tmp_path, 32, channels=1)  # a model with in_chans=1 reads them in gray
    assert one_channel.images.shape == (5, 1, 32, 32) and torch.equal(one_channel.images[1], gray[:1])
    with pytest.raises(CCTError, match="in_chans 4: images are read as 1 .grayscale. or 3 .RGB. channels"):
        load_dataset(str(tmp_path), tmp_path, channels=4)


def test_folder_dataset_names_an_unreadable_image(tmp_path):
    (tmp_path / "cats").mkdir()
    write_image(tmp_path / "cats" / "good.png", (32, 32))
    (tmp_path / "cats" / "broken.png").write_bytes(b"this is text, not a PNG")
    with pytest.raises(CCTError, match="broken.png: not a readable image"):
        load_image_folder(tmp_path, 32)


def test_folder_dataset_names_its_class_folders_without_images_before_decoding_any(tmp_path):
    # an empty class folder trained a head for a class never seen and tested it as 0.00% accurate
    for cls in ("cats", "dogs", "owls", "yaks"):
        (tmp_path / cls).mkdir()
    write_image(tmp_path / "dogs" / "0.png", (32, 32))
    (tmp_path / "dogs" / "broken.png").write_bytes(b"text")
    (tmp_path / "owls" / "notes.txt").write_text("not an image")
    with pytest.raises(CCTError, match=r"^\S+: no images \(.*\.png.*\) in the class folders cats, owls, yaks: "
                       "each class needs some$"):
        load_image_folder(tmp_path, 32)
    for cls in ("ants", "bees", "boars", "crows", "elks"):
        (tmp_path / cls).mkdir()
    with pytest.raises(CCTError, match=r"in the class folders ants, bees, boars, cats, crows and 3 more: "):
        load_image_folder(tmp_path, 32)


def test_a_folder_dataset_that_cannot_fit_in_memory_is_refused_before_decoding_any(tmp_path):
    # the whole set is held as uint8: more than the memory there is went on until the system killed the process
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        write_image(tmp_path / cls / "0.png", (32, 32))
    (tmp_path / "dogs" / "broken.png").write_bytes(b"text")
    with pytest.raises(CCTError, match=rf"^{tmp_path}: 3 images of 3x1000000x1000000 take 9,000.0 GB as uint8, twice that "
                       r"while loading; \d+\.\d GB of memory are free \(train at a smaller img_size, or on fewer "
                       r"images\)$"):
        load_image_folder(tmp_path, 1_000_000)


def test_folder_dataset_names_the_classes_train_and_test_do_not_share(tmp_path):
    for split, classes in (("train", ["cats", "dogs", "owls"]), ("test", ["cats", "dogs", "horses"])):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            write_image(tmp_path / split / cls / "0.png", (32, 32))
    (tmp_path / "train" / "cats" / "broken.png").write_bytes(b"text")  # the classes are compared before any decoding
    with pytest.raises(CCTError, match=r"different class folders \(only in train/: owls; only in test/: horses\)$"):
        load_dataset(str(tmp_path), tmp_path)
    for split, cls in (("train", "dogs"), ("train", "owls"), ("test", "dogs"), ("test", "horses")):
        shutil.rmtree(tmp_path / split / cls)
    # one class trained to a "100%" model without a word
    with pytest.raises(CCTError, match=r"one class folder \(cats\); a classifier needs two or more$"):
        load_dataset(str(tmp_path), tmp_path)


def test_only_the_splits_asked_for_are_read(tmp_path, capsys):
    # `cct evaluate` decoded every training image of a folder, then used the test split alone
    for split in ("train", "test"):
        for cls in ("cats", "dogs"):
            (tmp_path / split / cls).mkdir(parents=True)
            write_image(tmp_path / split / cls / "0.png", (32, 32))
    (tmp_path / "train" / "cats" / "broken.png").write_bytes(b"text")
    with pytest.raises(CCTError, match="1 unreadable image, fix or remove it: "):
        load_dataset(str(tmp_path), tmp_path)
    (test,) = load_dataset(str(tmp_path), tmp_path, splits=("test",))
    assert test.labels.tolist() == [0, 1] and test.classes == ["cats", "dogs"]
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", cct.create_model("cct_2_3x2_32", num_classes=2))
    assert main(["evaluate", "-c", str(checkpoint), "--dataset", str(tmp_path)]) == 0
    assert f"on {tmp_path} (2 test images): top-1" in capsys.readouterr().out
    # a folder of test images alone is evaluated (it needed a train/ folder beside it); training still needs one
    shutil.rmtree(tmp_path / "train")
    assert load_dataset(str(tmp_path), tmp_path, splits=("test",))[0].labels.tolist() == [0, 1]
    assert main(["evaluate", "-c", str(checkpoint), "--dataset", str(tmp_path)]) == 0
    assert f"on {tmp_path} (2 test images): top-1" in capsys.readouterr().out
    with pytest.raises(CCTError, match=f"no train/ folder beside its test/ \\(expected {tmp_path}/train/<class>"):
        load_dataset(str(tmp_path), tmp_path)
    # so is a folder of class folders itself, such as that test/ (it was refused, the user told to move the
    # class folders into a test/ of their own)
    (flat,) = load_dataset(str(tmp_path / "test"), tmp_path, splits=("test",))
    assert flat.labels.tolist() == [0, 1] and flat.classes == ["cats", "dogs"] and torch.equal(flat.images, test.images)
    assert main(["evaluate", "-c", str(checkpoint), "--dataset", str(tmp_path / "test")]) == 0
    assert f"on {tmp_path / 'test'} (2 test images): top-1" in capsys.readouterr().out
    with pytest.raises(CCTError, match="a folder of class folders, without train/ and test/: hold a share"):
        load_dataset(str(tmp_path / "test"), tmp_path)
    shutil.rmtree(tmp_path / "test" / "dogs")  # and checked as a test/ is
    with pytest.raises(CCTError, match=r"one class folder \(cats\); a classifier needs two or more$"):
        load_dataset(str(tmp_path / "test"), tmp_path, splits=("test",))
    write_cifar10_folder(tmp_path / "cifar")
    (tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"damaged, and not read")
    (test,) = load_dataset("cifar10", tmp_path / "cifar", splits=("test",))
    assert len(test) == 20


def test_a_folder_training_set_comes_shuffled_so_its_last_images_sample_every_class(tmp_path):
    # in folder order the last images (those that validate) were all of the last class
    for split, per_class in (("train", 20), ("test", 2)):
        for cls in ("a", "b", "c"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                write_image(tmp_path / split / cls / f"{i}.png", (32, 32), seed=i)
    train, test = load_dataset(str(tmp_path), tmp_path)
    again, _ = load_dataset(str(tmp_path), tmp_path)
    in_order = load_image_folder(tmp_path / "train", 32)
    assert torch.equal(train.labels, again.labels) and torch.equal(train.images, again.images)
    assert sorted(train.labels.tolist()) == in_order.labels.tolist() != train.labels.tolist()
    assert set(train.labels[-10:].tolist()) == {0, 1, 2} and set(train.labels[:10].tolist()) == {0, 1, 2}
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_flip_is_drawn_per_image():
    torch.manual_seed(0)
    x = torch.rand(256, 3, 32, 32)
    y = build_augmentation(32, crop_padding=0, hflip=True)(x)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    unchanged = (y == x).flatten(1).all(1)
    assert (flipped | unchanged).all()
    assert 90 < flipped.sum().item() < 166


def test_crop_with_padding_shifts_each_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32) + 1  # no zeros inside the image: zeros in the output come from the padding
    y = build_augmentation(32, crop_padding=4, hflip=False)(x)
    assert y.shape == x.shape
    padded_rows = (y == 0).all(dim=(1, 3)).sum(1)  # fully zero rows per image
    assert padded_rows.max() <= 4 and padded_rows.unique().numel() > 1
    assert torch.equal(build_augmentation(32, 0, False)(x), x)
