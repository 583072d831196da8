"""MNIST-format IDX files: read exactly, refused when damaged, and Fashion-MNIST by name from Debian's files."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest

from hfddpm import HFDDPMPipeline
from hfddpm.idx_data import FASHION_CLASSES, IDX_DATASETS, is_idx_folder, read_idx
from hfddpm.image_data import class_labels, load_image_dataset

FASHION = Path(IDX_DATASETS["fashion_mnist"].folders[0])
needs_fashion = pytest.mark.skipif(
    not is_idx_folder(FASHION), reason="apt-get install dataset-fashion-mnist (CI does)"
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: 0, 0, 0x08, the number of dimensions, each size (32-bit big-endian), values."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, images: np.ndarray, labels: np.ndarray, split="train", compress=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = {"train": "train", "test": "t10k"}[split]
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        (folder / (name + ".gz" if compress else name)).write_bytes(gzip.compress(data) if compress else data)
    return folder


def small_set(count=12, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), np.arange(count, dtype=np.uint8) % 3


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_an_idx_folder_is_read_pixel_for_pixel_with_its_labels(tmp_path, compress):
    images, labels = small_set()
    folder = write_idx_folder(tmp_path / "idx", images, labels, compress=compress)
    assert np.array_equal(read_idx(next(folder.glob("train-images*"))), images)
    dataset, column = load_image_dataset(train_data_dir=folder)
    assert column == "image" and len(dataset) == 12
    assert all(np.array_equal(np.asarray(dataset[i]["image"]), images[i]) for i in range(12))
    ids, names = class_labels(dataset)
    assert ids == labels.tolist() and names == ["0", "1", "2"]  # numbered by value: no names in IDX files


def test_a_split_the_folder_lacks_is_named_with_those_it_has(tmp_path):
    folder = write_idx_folder(tmp_path / "idx", *small_set())
    with pytest.raises(ValueError, match=r"splits \['train'\], not 'test'"):
        load_image_dataset(train_data_dir=folder, split="test")


def damaged(kind: str, folder: Path) -> Path:
    images, labels = small_set()
    if kind == "wrong magic":
        write_idx_folder(folder, images, labels, compress=False)
        path = folder / "train-images-idx3-ubyte"
        path.write_bytes(b"\x00\x00\x0d" + path.read_bytes()[3:])  # 0x0D: float values
    elif kind == "truncated":
        write_idx_folder(folder, images, labels, compress=False)
        path = folder / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "truncated gzip":
        write_idx_folder(folder, images, labels)
        path = folder / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:-50])
    elif kind == "counts differ":
        write_idx_folder(folder, images, labels[:-1])
        path = folder / "train-images-idx3-ubyte.gz"
    else:  # "not 28×28"
        write_idx_folder(folder, images[:, :16, :16], labels)
        path = folder / "train-images-idx3-ubyte.gz"
    return path


@pytest.mark.parametrize("kind", ["wrong magic", "truncated", "truncated gzip", "counts differ", "not 28×28"])
def test_a_damaged_idx_file_is_refused_in_one_line_naming_it(tmp_path, kind):
    path = damaged(kind, tmp_path / "idx")
    with pytest.raises(ValueError) as refusal:
        load_image_dataset(train_data_dir=tmp_path / "idx")
    assert str(path) in str(refusal.value) and "\n" not in str(refusal.value)


@needs_fashion
def test_fashion_mnist_by_name_is_the_idx_files_with_their_class_names():
    train, _ = load_image_dataset("fashion_mnist")
    test, _ = load_image_dataset("fashion_mnist", split="test")
    assert (len(train), len(test)) == (60_000, 10_000)  # Xiao et al. 2017
    ids, names = class_labels(test)
    assert names == list(FASHION_CLASSES) and np.bincount(ids).tolist() == [1000] * 10  # balanced test set
    assert names[ids[0]] == "Ankle boot" and np.asarray(test[0]["image"]).shape == (28, 28)
    same, _ = load_image_dataset(train_data_dir=FASHION, split="test")  # the folder itself: same pixels, numbered
    assert np.array_equal(np.asarray(same[17]["image"]), np.asarray(test[17]["image"]))


def test_a_named_dataset_neither_installed_nor_reachable_says_how_to_get_it(monkeypatch):
    import datasets

    from hfddpm import idx_data

    elsewhere = dataclasses.replace(IDX_DATASETS["fashion_mnist"], folders=("/nonexistent",))
    monkeypatch.setitem(idx_data.IDX_DATASETS, "fashion_mnist", elsewhere)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'zalando-datasets/fashion_mnist' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist") as refusal:
        load_image_dataset("fashion_mnist")
    assert "--train_data_dir" in str(refusal.value)


def test_class_conditional_training_takes_an_idx_folder(tmp_path):
    from .test_train_script import FAST
    from .training_runner import train_unconditional_command

    folder = write_idx_folder(tmp_path / "idx", *small_set())
    argv = ["--output_dir", tmp_path / "run", *FAST, "--train_data_dir", folder, "--class_conditional"]
    assert train_unconditional_command([*map(str, argv), "--resolution", "28", "--max_train_steps", "2"]) == 0
    pipeline = HFDDPMPipeline.from_pretrained(tmp_path / "run")
    assert pipeline.id2label == {0: "0", 1: "1", 2: "2"} and pipeline.sample_shape(1)[1:3] == (1, 28)
