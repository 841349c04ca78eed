"""Datasets held in memory as uint8 tensors: CIFAR-10/100 and folders of users' own images."""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import torch
from tqdm import tqdm

from ..errors import CCTError, first_few
from .download import download, extract
from .images import IMAGE_SUFFIXES, check_channels, image_files, load_images

if TYPE_CHECKING:
    from ..models import CCTConfig


@dataclass
class ImageTensors:
    """Images (N, 3, H, W) uint8 with labels (N,) int64 and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: slice | torch.Tensor) -> "ImageTensors":
        return ImageTensors(self.images[index], self.labels[index], self.classes)

    def shuffled(self) -> "ImageTensors":
        """The images in a fixed random order (seed 0), the same on every call and every machine."""
        return self.subset(torch.randperm(len(self), generator=torch.Generator().manual_seed(0)))

    def to(self, device: torch.device | str) -> "ImageTensors":
        return ImageTensors(self.images.to(device), self.labels.to(device), self.classes)


@dataclass(frozen=True)
class CifarSpec:
    name: str
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CIFAR = {
    "cifar10": CifarSpec("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                         tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                         b"labels", b"label_names"),
    "cifar100": CifarSpec("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", ("train",), ("test",), "meta",
                          b"fine_labels", b"fine_label_names"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Reads the official CIFAR pickles, refusing every global but the ones a numpy array needs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.endswith("core.multiarray"):  # numpy.core (the official files') is numpy 2's numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except FileNotFoundError:
        raise CCTError(f"{path}: missing (not a complete CIFAR folder)") from None
    except Exception as e:
        raise CCTError(f"{path}: not a valid CIFAR batch file ({e})") from e


def _read_split(folder: Path, files: tuple[str, ...], spec: CifarSpec, classes: list[str]) -> ImageTensors:
    images, labels = [], []
    for name in files:
        batch = _read_pickle(folder / name)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            label = np.asarray(batch[spec.label_key], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise CCTError(f"{folder / name}: not a valid CIFAR batch file ({e!r})") from e
        if len(data) != len(label) or label.min() < 0 or label.max() >= len(classes):
            raise CCTError(f"{folder / name}: labels do not match the images or the classes")
        images.append(data)
        labels.append(label)
    return ImageTensors(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), classes)


def find_cifar(spec: CifarSpec, data_dir: Path, download_missing: bool = True) -> Path:
    """The extracted folder of `spec` under `data_dir`: used as is, extracted from the official archive, or
    downloaded from the official URL (md5-checked) when neither is there."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise CCTError(f"{data_dir}: a file, not a folder (the data folder is where CIFAR lives or is downloaded to)")
    for candidate in (data_dir, data_dir / spec.folder):
        if (candidate / spec.meta_file).is_file():
            return candidate
    archive = data_dir / spec.archive
    if not archive.is_file():
        if not download_missing:
            raise CCTError(f"{data_dir}: no {spec.folder}/ or {spec.archive} here (and downloading is off)")
        download(spec.url, archive, spec.md5)
    return extract(archive, spec.md5, data_dir, spec.folder)


def load_cifar(name: str, data_dir: str | Path, download_missing: bool = True, spec: CifarSpec | None = None,
               splits: tuple[str, ...] = ("train", "test")) -> tuple[ImageTensors, ...]:
    """The `splits` (train, test) of CIFAR-10 or CIFAR-100, as uint8 tensors in the official order."""
    if spec is None:
        if name not in CIFAR:
            raise CCTError(f"unknown dataset '{name}' (choose from {', '.join(CIFAR)} or a folder of images)")
        spec = CIFAR[name]
    folder = find_cifar(spec, Path(data_dir), download_missing)
    meta = _read_pickle(folder / spec.meta_file)
    classes = [c.decode() for c in meta[spec.names_key]]
    files = {"train": spec.train_files, "test": spec.test_files}
    return tuple(_read_split(folder, files[split], spec, classes) for split in splits)


def _subfolders(root: Path) -> list[str]:
    """The sorted names of the folders in `root`, hidden ones left out."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_folders(root: Path) -> list[str]:
    """The sorted names of the class folders in `root`, hidden ones left out."""
    if not root.is_dir():
        raise CCTError(f"{root}: not a folder")
    classes = _subfolders(root)
    if not classes:
        raise CCTError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    return classes


def _labelled_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes of a folder of class folders (`class_folders`) and its image files (`image_files`), each with the
    index of its class."""
    classes = class_folders(root)
    return classes, [(path, label) for label, cls in enumerate(classes) for path in image_files(root / cls)]


def load_image_folder(root: str | Path, img_size: int, channels: int = 3) -> ImageTensors:
    """A folder with one subfolder of images per class (sorted names are the classes; images in folders below a
    class folder count for it, as in torchvision's ImageFolder; hidden ones do not, see `image_files`), resized
    to img_size x img_size and read with `channels` (3: RGB, 1: grayscale) the way `cct predict` converts images.
    A class folder without images and unreadable files are errors naming them."""
    root = Path(root)
    classes, files = _labelled_files(root)
    labelled = {label for _, label in files}
    empty = [cls for label, cls in enumerate(classes) if label not in labelled]
    if empty:
        raise CCTError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class "
                       f"folder{'s' * (len(empty) > 1)} {first_few(empty, 5)}: each class needs some")
    shape = (len(files), channels, img_size, img_size)
    size, free = math.prod(shape), psutil.virtual_memory().available
    if 2 * size > free:
        raise CCTError(f"{root}: {len(files):,} images of {channels}x{img_size}x{img_size} take {size / 1e9:,.1f} GB as "
                       f"uint8, twice that while loading; {free / 1e9:,.1f} GB of memory are free (train at a smaller "
                       "img_size, or on fewer images)")
    images, failures = torch.empty(shape, dtype=torch.uint8), []
    loaded = load_images([path for path, _ in files], img_size, channels)
    for i, image in enumerate(tqdm(loaded, total=len(files), unit="image", desc=f"loading {root}", leave=False,
                                   disable=None)):
        if isinstance(image, str):
            failures.append(image)
        else:
            images[i] = image
    if failures:
        raise CCTError(f"{root}: {len(failures)} unreadable image{'s' * (len(failures) > 1)}, fix or remove "
                       f"{'them' if len(failures) > 1 else 'it'}: {first_few(failures, 5, '; ')}")
    return ImageTensors(images, torch.tensor([label for _, label in files]), classes)


def load_dataset(name: str, data_dir: str | Path, img_size: int = 32, channels: int = 3, download_missing: bool = True,
                 splits: tuple[str, ...] = ("train", "test")) -> tuple[ImageTensors, ...]:
    """The `splits` (train, test; only those are read) of a dataset by name: "cifar10", "cifar100", or a folder
    holding train/ and test/ folders of classes, the same in both (test/ alone where only the test split is read,
    or the class folders themselves).
    A folder's training images come in a fixed shuffled order (seed 0), as CIFAR's do: the last ones, which
    validate (`Recipe.val_size`), and the first, which `limit_train` keeps, are then a sample of every class,
    not the last or first class folders. A folder's images are read with `channels` (the model's in_chans)."""
    check_channels(channels)
    if name in CIFAR:
        if channels != 3:
            raise CCTError(f"{name}: its images are RGB, so the model's in_chans must be 3, not {channels}")
        return load_cifar(name, data_dir, download_missing, splits=splits)
    root = Path(name)
    folders = {split: root / split for split in ("train", "test") if (root / split).is_dir()}
    missing = [split for split in splits if split not in folders]
    if missing and folders:
        raise CCTError(f"{name}: no {missing[0]}/ folder beside its {next(iter(folders))}/ (expected "
                       f"{name}/{missing[0]}/<class>/<image>)")
    if missing:
        if not root.exists():
            raise CCTError(f"{name}: no such folder, nor a dataset name ({', '.join(CIFAR)})")
        if not (root.is_dir() and _subfolders(root)):
            raise CCTError(f"{name}: not a dataset folder (expected "
                           f"{' and '.join(f'{name}/{split}/<class>/<image>' for split in splits)})")
        if splits != ("test",):
            raise CCTError(f"{name}: a folder of class folders, without train/ and test/: hold a share of each "
                           "class's images out as test/<class>/, and move the rest to train/<class>/")
        folders = {"test": root}  # labelled images to test on, such as another dataset's test/
    classes = {split: class_folders(folder) for split, folder in folders.items()}
    if len(classes) == 2 and classes["train"] != classes["test"]:
        differ = (("train", set(classes["train"]) - set(classes["test"])),
                  ("test", set(classes["test"]) - set(classes["train"])))
        only = [f"only in {split}/: {', '.join(sorted(names))}" for split, names in differ if names]
        raise CCTError(f"{root}: train/ and test/ have different class folders ({'; '.join(only)})")
    first = next(iter(classes.values()))
    if len(first) < 2:
        raise CCTError(f"{root}: one class folder ({first[0]}); a classifier needs two or more")
    loaded = [load_image_folder(folders[split], img_size, channels) for split in splits]
    return tuple(data.shuffled() if split == "train" else data for split, data in zip(splits, loaded))


def count_images(name: str, data_dir: str | Path, split: str) -> int:
    """How many images the `split` ("train" or "test") of a dataset `load_dataset` takes holds: CIFAR's, read; a
    folder's image files, counted without decoding them."""
    if name in CIFAR:
        return len(load_cifar(name, data_dir, splits=(split,))[0])
    if not (Path(name) / split).is_dir():
        raise CCTError(f"{name}: no {split}/ folder (expected {name}/{split}/<class>/<image>)")
    return len(_labelled_files(Path(name) / split)[1])


def recorded_dataset(name: str, trained: str | Path) -> str:
    """`name`, the dataset that `trained` (a run folder or checkpoint) records it was trained on; a folder that is no
    longer there is a CCTError saying how to give its new place."""
    if name not in CIFAR and not Path(name).exists():
        raise CCTError(f"{name}: no such folder, the dataset {trained} was trained on (moved? give its new place with "
                       "--dataset)")
    return name


def labelled_as_model(model: CCTConfig, data: ImageTensors, name: str, owner: str | Path) -> ImageTensors:
    """`data` labelled by the classes of the `model` of `owner`: as it is where it has them all in their order
    (`require_classes`); a dataset of some of the model's classes, matched by name, labelled by the model's
    indices (the others have no images)."""
    if model.class_names and set(data.classes) < set(model.class_names):
        index = torch.tensor([model.class_names.index(cls) for cls in data.classes])
        return ImageTensors(data.images, index[data.labels], list(model.class_names))
    require_classes(model, data, name, owner)
    return data


def require_classes(model: CCTConfig, data: ImageTensors, name: str, owner: str | Path) -> None:
    """`data` (read from the dataset `name`) must have the classes of the `model` of `owner`, in that order (where
    the model names them): a model scored or trained on other classes takes class i for its own class i."""
    if len(data.classes) != model.num_classes:
        raise CCTError(f"{owner}: the model has {model.num_classes} classes, {name} has {len(data.classes)}")
    named_apart = [(i, a, b) for i, (a, b) in enumerate(zip(model.class_names, data.classes)) if a != b]
    if named_apart:
        i, a, b = named_apart[0]
        raise CCTError(f"{owner}: the model's classes are not {name}'s (class {i}: the model's '{a}', {name}'s '{b}')")
