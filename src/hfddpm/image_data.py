"""Training images: the built-in digits, Hub datasets, saved datasets and image folders, pre-tensorised once.

Decoding and resizing happen once, in `datasets.map` (cached on disk for file-backed datasets, so later runs reuse
it); each training item is then a crop and a flip of stored uint8 pixels. The random crop and flip of an item are
seeded by (seed, epoch, index), so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch

from .idx_data import IDX_DATASETS, is_idx_folder, load_idx_split, load_named

if TYPE_CHECKING:  # imported where used: `import hfddpm` does not load datasets
    import datasets

DIGITS = "digits"
DIGITS_TRAIN_SIZE = 1500  # of sklearn's 1797 UCI digits; the last 297 are the held-out "test" split
# PIL modes with more than 8 bits per channel: 32-bit integer, 16-bit integer (any byte order), float.
DEEP_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# PIL modes without colour: bilevel, grey (with alpha) and the deep ones.
GRAYSCALE_MODES = ("1", "L", "LA", "La", *DEEP_MODES)
# The PIL modes whose conversion to 8-bit "L" or "RGB" changes their values, and how: PIL clips values above 255,
# and copies CIELAB's L, a, b as if they were R, G, B.
LOSSY_MODES = {
    **dict.fromkeys(DEEP_MODES, " (more than 8 bits), which converting to 8-bit would clip"),
    "LAB": ", which PIL cannot convert to RGB with their colours kept",
}

DECODE_BATCH = 1000  # images decoded at once (datasets' default map batch)


def load_digits_dataset(split: str = "train") -> datasets.Dataset:
    """The UCI handwritten digits shipped with scikit-learn: 8×8 images with 17 grey levels, and their labels.

    Returned as a `datasets.Dataset` with an "image" (PIL, mode "L", levels scaled to 0–255) and a "label" column;
    "train" is the first 1500 images, "test" the remaining 297.
    """
    import datasets
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"the digits dataset has splits 'train' and 'test', got {split!r}; pick one with --split")
    digits = load_digits()
    rows = slice(0, DIGITS_TRAIN_SIZE) if split == "train" else slice(DIGITS_TRAIN_SIZE, None)
    pixels = np.round(digits.images[rows] * 255 / 16).astype(np.uint8)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    return datasets.Dataset.from_dict(
        {"image": [PIL.Image.fromarray(p, mode="L") for p in pixels], "label": digits.target[rows].tolist()},
        features=features,
    )


def load_image_dataset(
    dataset_name: str | os.PathLike | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    split: str = "train",
    image_column: str | None = None,
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, str]:
    """Load training images and name their column.

    `train_data_dir` is an image folder (datasets' "imagefolder" builder) or a folder of MNIST-format IDX files;
    `dataset_name` is "fashion_mnist" or "mnist" (`hfddpm.idx_data`), a folder written by `save_to_disk` or a Hub
    dataset; with neither, the built-in digits. The image column is `image_column`, or the dataset's first column of
    `datasets.Image` type.
    """
    import datasets

    dataset_name = None if dataset_name is None else os.fspath(dataset_name)
    train_data_dir = None if train_data_dir is None else os.fspath(train_data_dir)
    if train_data_dir is not None and dataset_name is not None:
        raise ValueError("pass either --dataset_name or --train_data_dir, not both")
    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise FileNotFoundError(f"--train_data_dir {train_data_dir!r} is not a folder; point it at your images")
        if is_idx_folder(train_data_dir):
            dataset = load_idx_split(train_data_dir, split)
        else:
            try:
                dataset = datasets.load_dataset(
                    "imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir
                )
            except (datasets.data_files.EmptyDatasetError, datasets.exceptions.DataFilesNotFoundError) as error:
                raise ValueError(
                    f"--train_data_dir {train_data_dir!r} holds no image files; add images or fix the path"
                ) from error
    elif dataset_name is None or dataset_name == DIGITS:
        dataset = load_digits_dataset(split)
    elif dataset_name in IDX_DATASETS:
        dataset = load_named(dataset_name, split, cache_dir)
    elif os.path.isdir(dataset_name) and is_saved_dataset(dataset_name):
        saved = datasets.load_from_disk(dataset_name)
        splits = saved if isinstance(saved, datasets.DatasetDict) else {split: saved}
        if split not in splits:
            raise ValueError(f"{dataset_name!r} has splits {sorted(splits)}, not {split!r}; pick one with --split")
        dataset = splits[split]
    else:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)

    if len(dataset) == 0:
        raise ValueError("the training dataset is empty; check the path, the split and the image files")
    if image_column is None:
        image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
        if not image_columns:
            raise ValueError(f"no image column among {list(dataset.features)}; name one with --image_column")
        image_column = image_columns[0]
    elif image_column not in dataset.column_names:
        raise ValueError(f"--image_column {image_column!r} is not a column; the columns are {dataset.column_names}")
    return dataset, image_column


def class_labels(dataset: datasets.Dataset, label_column: str | None = None) -> tuple[list[int], list[str]]:
    """Each image's class id and the class names, from `label_column` or else the first `ClassLabel` column (the
    digits' "label", an image folder's subfolder names).

    A `ClassLabel` column keeps its ids and names; any other column of integers or strings is numbered in the sorted
    order of its distinct values, which become the names.
    """
    import datasets

    if label_column is None:
        found = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.ClassLabel)]
        if not found:
            raise ValueError(
                f"--class_conditional needs class labels, and none of the columns {dataset.column_names} is a "
                "ClassLabel; name one with --label_column (an image folder takes its labels from two or more "
                "subfolders)"
            )
        label_column = found[0]
    elif label_column not in dataset.column_names:
        raise ValueError(f"--label_column {label_column!r} is not a column; the columns are {dataset.column_names}")
    feature, values = dataset.features[label_column], dataset[label_column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        if bad := [i for i, value in enumerate(values) if not 0 <= value < len(names)]:
            raise ValueError(f"image {bad[0]} (and {len(bad) - 1} more) has no class label in {label_column!r}")
        ids = list(values)
    else:
        if bad := [i for i, value in enumerate(values) if type(value) not in (int, str)]:
            raise ValueError(
                f"--label_column {label_column!r} must hold integers or strings; image {bad[0]} has {values[bad[0]]!r}"
            )
        distinct = sorted(set(values), key=lambda value: (isinstance(value, str), value))
        names, index = [str(value) for value in distinct], {value: i for i, value in enumerate(distinct)}
        ids = [index[value] for value in values]
    if len(names) < 2:
        raise ValueError(
            f"the labels in {label_column!r} name {len(names)} class; class-conditional training needs at least 2 "
            "(drop --class_conditional to train unconditionally)"
        )
    return ids, names


def is_saved_dataset(folder: str) -> bool:
    """Whether `folder` was written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return any(os.path.exists(os.path.join(folder, name)) for name in ("dataset_info.json", "dataset_dict.json"))


@dataclass(frozen=True)
class ImagePreprocessing:
    """Resize the shorter side to `resolution` (bilinear, antialiased), then crop a square of that size.

    The deterministic part — mode conversion, resize, and the crop when `center_crop` — runs once per image
    (`pretensorize`); the random crop and horizontal flip run per item (`TrainingImages`).
    """

    resolution: int
    channels: int = 3
    center_crop: bool = True
    random_flip: bool = False

    def prepare(self, image: PIL.Image.Image, source: str = "the image") -> np.ndarray:
        """uint8 array (C, H, W) with min(H, W) = resolution, square when `center_crop`; `source` names the image
        in the error when its mode cannot become 8-bit with its values kept (`to_eight_bit`)."""
        image = to_eight_bit(image, self.channels, source)
        width, height = image.size
        scale = self.resolution / min(width, height)
        size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        if size != image.size:
            image = image.resize(size, PIL.Image.BILINEAR)
        if self.center_crop:
            left, top = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
            image = image.crop((left, top, left + self.resolution, top + self.resolution))
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def pretensorize(
    dataset: datasets.Dataset, image_column: str, preprocessing: ImagePreprocessing, num_proc: int | None = None
) -> datasets.Dataset:
    """Decode and resize every image once into a dataset of raw uint8 pixels ("pixels" bytes and their "shape",
    and the image's original PIL "mode")."""
    import datasets

    def convert(batch):
        entries = batch[image_column]
        images = [_open_image(entry) for entry in entries]
        arrays = [preprocessing.prepare(image, _source(entry)) for image, entry in zip(images, entries, strict=True)]
        return {
            "pixels": [a.tobytes() for a in arrays],
            "shape": [list(a.shape) for a in arrays],
            "mode": [image.mode for image in images],
        }

    undecoded = dataset.cast_column(image_column, datasets.Image(decode=False))
    return undecoded.map(
        convert,
        batched=True,
        batch_size=DECODE_BATCH,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="Decoding and resizing images",
    )


def first_image_mode(dataset: datasets.Dataset, image_column: str) -> str:
    """The PIL mode of the first image, read with the same clear error as `pretensorize` when it is unreadable."""
    import datasets

    return _open_image(dataset.cast_column(image_column, datasets.Image(decode=False))[0][image_column]).mode


def check_eight_bit(image: PIL.Image.Image, source: str) -> PIL.Image.Image:
    """`image` unless converting it to 8-bit "L" or "RGB" would change its values: pixels of more than 8 bits
    (clipped above 255) or CIELAB colours (which PIL copies as R, G, B)."""
    if image.mode in LOSSY_MODES:
        raise ValueError(
            f"{source} has {image.mode!r} pixels{LOSSY_MODES[image.mode]}; convert it to 8-bit RGB or L first"
        )
    return image


def to_eight_bit(image: PIL.Image.Image, channels: int, source: str) -> PIL.Image.Image:
    """`image` as 8-bit "L" (`channels` 1) or "RGB" (3) with its values kept: alpha dropped (premultiplied alpha
    divided out first), a palette expanded, bilevel 0/1 as 0/255, CMYK, YCbCr and HSV by PIL's formulas; a mode
    whose values cannot be kept is refused (`check_eight_bit`)."""
    check_eight_bit(image, source)
    if image.mode == "La":  # PIL converts premultiplied grey only to straight alpha
        image = image.convert("LA")
    return image.convert("L" if channels == 1 else "RGB")


def channels_of_mode(mode: str) -> int:
    """1 for a grayscale PIL mode, 3 for a colour one."""
    return 1 if mode in GRAYSCALE_MODES else 3


def check_same_colour(pixels: datasets.Dataset) -> None:
    """Refuse images that mix grayscale and colour: converting either way may not be what the user wants."""
    channels = {channels_of_mode(mode) for mode in pixels.unique("mode")}
    if len(channels) > 1:
        colour = sum(channels_of_mode(mode) == 3 for mode in pixels["mode"])
        raise ValueError(
            f"the images mix grayscale and colour ({colour} of {len(pixels)} in colour); pass --channels 3 to "
            "train in colour or --channels 1 to train in grayscale"
        )


def _source(entry: dict) -> str:
    """How an undecoded `datasets.Image` entry is named in errors: its file, else "an embedded image"."""
    return entry.get("path") or "an embedded image"


def _open_image(entry: dict) -> PIL.Image.Image:
    """Decode an undecoded `datasets.Image` entry, naming the file when it is not a readable image or its pixels
    cannot become 8-bit with their values kept."""
    image = read_image(io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"], _source(entry))
    return check_eight_bit(image, _source(entry))


def read_image(file: str | os.PathLike | io.BytesIO, source: str) -> PIL.Image.Image:
    """The image in `file`, decoded in full; one line naming `source` when it is not a readable image."""
    try:
        image = PIL.Image.open(file)
        image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{source} does not exist; fix the path") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read {source}: {error}; remove or replace the file") from error
    return image


@dataclass(eq=False)
class TrainingImages(torch.utils.data.Dataset):
    """Pre-tensorised images as float tensors in [−1, 1], cropped and flipped reproducibly; with `labels` (one class
    id per image, the classes named by `label_names`), each item is the pair (image, class id).

    Item i of epoch e draws its crop offset and flip from a generator seeded with (seed, e, i).
    """

    pixels: datasets.Dataset
    preprocessing: ImagePreprocessing
    seed: int = 0
    labels: list[int] | None = None
    label_names: list[str] | None = None
    epoch: int = field(default=0, init=False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def fingerprint(self) -> str:
        """A short SHA-256 of the decoded pixels and the labels: the data's identity, wherever it was read from."""
        digest = hashlib.sha256(json.dumps([self.labels, self.label_names]).encode())
        for batch in self.pixels.iter(batch_size=4096):
            digest.update(b"".join(batch["pixels"]))
        return digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor] | list[tuple[torch.Tensor, int]]:
        """A batch of items with one read of the stored pixels (DataLoader calls this when it exists)."""
        rows = self.pixels[[int(i) for i in indices]]
        images = [
            self._augment(np.frombuffer(pixels, dtype=np.uint8).reshape(shape), int(index))
            for index, pixels, shape in zip(indices, rows["pixels"], rows["shape"], strict=True)
        ]
        if self.labels is None:
            return images
        return [(image, self.labels[int(index)]) for image, index in zip(images, indices, strict=True)]

    def _augment(self, image: np.ndarray, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        size = self.preprocessing.resolution
        _, height, width = image.shape
        top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        image = image[:, top : top + size, left : left + size]
        if self.preprocessing.random_flip and rng.random() < 0.5:
            image = image[:, :, ::-1]
        return torch.from_numpy(image.astype(np.float32)) / 127.5 - 1


def image_batches(
    source: str,
    split: str,
    resolution: int,
    channels: int,
    batch_size: int,
    image_column: str | None = None,
    max_images: int | None = None,
) -> torch.utils.data.DataLoader:
    """Batches of a dataset's images as float tensors in [−1, 1], in order, centre-cropped: for evaluation.

    `source` is "digits" (built in), an image folder, a `save_to_disk` folder or a Hub dataset name; the first
    `max_images` images are used (all when None).
    """
    image_folder = os.path.isdir(source) and not is_saved_dataset(source)
    where = {"train_data_dir" if image_folder else "dataset_name": source}
    dataset, image_column = load_image_dataset(**where, split=split, image_column=image_column)
    if max_images is not None:
        dataset = dataset.select(range(min(max_images, len(dataset))))
    preprocessing = ImagePreprocessing(resolution, channels, center_crop=True, random_flip=False)
    images = TrainingImages(pretensorize(dataset, image_column, preprocessing), preprocessing)
    return torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
