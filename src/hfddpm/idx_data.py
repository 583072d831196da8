"""MNIST-format datasets: Fashion-MNIST and MNIST by name, and any folder of IDX files (MNIST, KMNIST, EMNIST).

An IDX file (LeCun et al., "THE MNIST DATABASE") is a big-endian header — two zero bytes, a type byte (0x08 for
unsigned bytes), the number of dimensions — then one 32-bit size per dimension and the values; gzip-compressed or
not. A folder holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
`t10k-labels-idx1-ubyte` (each maybe `.gz`), read as the splits "train" and "test".

`--dataset_name fashion_mnist` or `mnist` reads the IDX files where Debian installs them (`apt-get install
dataset-fashion-mnist` puts Fashion-MNIST in `/usr/share/datasets/fashion-mnist/`) and otherwise the same data from
the Hub, with the same splits, labels and class names either way.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .arguments import first_line

if TYPE_CHECKING:
    import datasets

SPLIT_PREFIXES = {"train": "train", "test": "t10k"}
SIZE = 28  # every MNIST-format dataset's images are 28×28


@dataclass(frozen=True)
class IdxDataset:
    """A named MNIST-format dataset: where its IDX files may be, the Debian package that installs them (if any), its
    Hub copy, and its class names."""

    folders: tuple[str, ...]
    package: str | None
    hub_id: str
    class_names: tuple[str, ...]
    description: str


# Fashion-MNIST's classes in label order (Xiao et al. 2017, Table 1).
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")  # fmt: skip
IDX_DATASETS = {
    "fashion_mnist": IdxDataset(
        ("/usr/share/datasets/fashion-mnist",),
        "dataset-fashion-mnist",
        "zalando-datasets/fashion_mnist",
        FASHION_CLASSES,
        "Fashion-MNIST (Xiao et al. 2017: 28×28 grey images of 10 kinds of clothing)",
    ),
    "mnist": IdxDataset(
        ("/usr/share/datasets/mnist",),
        None,
        "ylecun/mnist",
        tuple(str(digit) for digit in range(10)),
        "MNIST (LeCun et al. 1998: 28×28 grey handwritten digits)",
    ),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The unsigned-byte array an IDX file holds, refused in one line naming the file when its header is not an IDX
    one of unsigned bytes, or its size is not the header's."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        try:
            data = file.read()
        except (OSError, EOFError) as error:  # a damaged or truncated gzip stream
            raise ValueError(f"{path} cannot be read ({error}); download it again") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (its magic number is {data[:4].hex()})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3]))
    values = data[4 + 4 * len(shape) :]
    if len(values) != int(np.prod(shape)):
        raise ValueError(f"{path} holds {len(values)} values where its header says {'×'.join(map(str, shape))}")
    return np.frombuffer(values, dtype=np.uint8).reshape(shape)


def idx_files(folder: str | os.PathLike, split: str) -> tuple[Path, Path] | None:
    """The images and labels files of `split` in `folder` (gzip-compressed or not), or None when it has none."""
    if split not in SPLIT_PREFIXES:
        return None
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        names = [f"{SPLIT_PREFIXES[split]}-{kind}-ubyte{suffix}" for suffix in ("", ".gz")]
        found.append(next((Path(folder, n) for n in names if Path(folder, n).is_file()), None))
    return None if None in found else tuple(found)


def is_idx_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds the IDX files of a training split."""
    return os.path.isdir(folder) and idx_files(folder, "train") is not None


def load_idx_split(folder: str | os.PathLike, split: str, class_names: tuple[str, ...] | None = None):
    """The `split` ("train" or "test") of the IDX files in `folder` as a `datasets.Dataset` of "image" (PNG, mode L)
    and "label" (a `ClassLabel` named by `class_names`, else by the label values), built once and cached by datasets
    (keyed by the arrays read: the files are read and checked on every load, and decoded into a dataset once)."""
    import datasets

    files = idx_files(folder, split)
    if files is None:
        splits = [name for name in SPLIT_PREFIXES if idx_files(folder, name)]
        raise ValueError(f"{folder} has IDX files of the splits {splits}, not {split!r}; pick one with --split")
    images, labels = (read_idx(path) for path in files)
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE) or labels.ndim != 1:
        raise ValueError(f"{files[0]} holds images of shape {images.shape[1:]}, not MNIST's 28×28 (or its labels' "
                         f"{files[1]} is not a list)")  # fmt: skip
    if len(images) != len(labels):
        raise ValueError(f"{files[0]} holds {len(images)} images and {files[1]} {len(labels)} labels; they must match")
    names = class_names or tuple(str(value) for value in range(int(labels.max()) + 1))
    if labels.max() >= len(names):
        raise ValueError(f"{files[1]} has the label {labels.max()}, and the dataset has {len(names)} classes")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    arguments = {"images": images, "labels": labels}  # arrays: datasets keys its cache by their hash
    return datasets.Dataset.from_generator(_examples, features=features, gen_kwargs=arguments)


def _examples(images: np.ndarray, labels: np.ndarray):
    """The examples of the images and labels read from IDX files."""
    import PIL.Image

    for image, label in zip(images, labels, strict=True):
        yield {"image": PIL.Image.fromarray(image), "label": int(label)}


def load_named(name: str, split: str, cache_dir: str | None = None) -> datasets.Dataset:
    """Fashion-MNIST or MNIST (`IDX_DATASETS`): from its IDX files where they are installed, else from the Hub with
    the same class names; neither is a one-line error saying how to get them."""
    import datasets

    known = IDX_DATASETS[name]
    folder = next((folder for folder in known.folders if is_idx_folder(folder)), None)
    if folder is not None:
        return load_idx_split(folder, split, known.class_names)
    try:
        dataset = datasets.load_dataset(known.hub_id, split=split, cache_dir=cache_dir)
    except Exception as error:  # offline, or no such split: all the same to the user
        install = f"install them (Debian: apt-get install {known.package}), " if known.package else ""
        raise ValueError(
            f"--dataset_name {name}: no IDX files in {', '.join(known.folders)}, and {known.hub_id} could not be "
            f"loaded from the Hub ({first_line(error)[:80]}); {install}pass --train_data_dir FOLDER of its IDX files, "
            "or go online"
        ) from None
    return dataset.cast_column("label", datasets.ClassLabel(names=list(known.class_names)))
