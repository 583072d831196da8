"""Training data: the built-in digits, image folders, saved datasets, their class labels, preprocessing, every PIL
mode kept or refused, and seeded augmentation. The data refusals the training script answers in one line are in
tests/test_train_script.py."""

import re

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from hfddpm.image_data import (
    ImagePreprocessing,
    TrainingImages,
    class_labels,
    load_digits_dataset,
    load_image_dataset,
    pretensorize,
)


def test_digits_dataset_is_the_uci_digits():
    train, test = load_digits_dataset("train"), load_digits_dataset("test")
    assert (len(train), len(test)) == (1500, 297)
    image = train[0]["image"]
    assert image.mode == "L" and image.size == (8, 8)
    pixels = np.stack([np.asarray(row["image"]) for row in train])
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) == 17  # sklearn's 17 grey levels, 0–16, scaled to 0–255
    assert sorted(set(train["label"])) == list(range(10))
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_digits_dataset("validation")


def test_preprocessing_resizes_the_shorter_side_and_centre_crops():
    # A 40×20 image whose columns encode their x coordinate: after the resize to 32×16 the centre crop keeps
    # x ∈ [8, 24) of the resized image, i.e. the middle half.
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.float64), (20, 1)).astype(np.uint8)
    image = PIL.Image.fromarray(ramp, mode="L")
    prepared = ImagePreprocessing(resolution=16, channels=1).prepare(image)
    expected = np.asarray(image.resize((32, 16), PIL.Image.BILINEAR))[:, 8:24]
    assert prepared.shape == (1, 16, 16)
    np.testing.assert_array_equal(prepared[0], expected)
    rgb = ImagePreprocessing(resolution=16, channels=3, center_crop=False).prepare(image)
    assert rgb.shape == (3, 16, 32)  # kept whole for the per-item random crop


def test_random_crop_and_flip_are_seeded_by_seed_epoch_and_index():
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 48, 3), dtype=np.uint8))
    dataset = datasets.Dataset.from_dict(
        {"image": [image] * 4}, features=datasets.Features({"image": datasets.Image()})
    )
    preprocessing = ImagePreprocessing(resolution=16, channels=3, center_crop=False, random_flip=True)
    pixels = pretensorize(dataset, "image", preprocessing)
    items = TrainingImages(pixels, preprocessing, seed=7)
    seen = set()
    for epoch in range(12):
        items.set_epoch(epoch)
        first = items[0]
        assert first.shape == (3, 16, 16) and -1 <= first.min() and first.max() <= 1
        assert torch.equal(first, items[0])  # same (seed, epoch, index), same crop and flip
        seen.add(first.numpy().tobytes())
        assert torch.equal(torch.stack(items.__getitems__([0, 1])), torch.stack([items[0], items[1]]))
    assert len(seen) >= 6  # 33 offsets × 2 flips: twelve epochs give many distinct crops
    other = TrainingImages(pixels, preprocessing, seed=8)
    assert not all(torch.equal(items[i], other[i]) for i in range(4))


def test_items_are_the_stored_pixels_scaled_to_minus_one_one():
    dataset = load_digits_dataset("test")
    preprocessing = ImagePreprocessing(resolution=8, channels=1)
    items = TrainingImages(pretensorize(dataset, "image", preprocessing), preprocessing)
    expected = torch.from_numpy(np.asarray(dataset[5]["image"], dtype=np.float32)) / 127.5 - 1
    torch.testing.assert_close(items[5][0], expected)


def write_image_folder(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(folder / "rgb.png")
    PIL.Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(folder / "gray.png")
    PIL.Image.fromarray(rng.integers(0, 255, (24, 24, 4), dtype=np.uint8), mode="RGBA").save(folder / "alpha.png")
    PIL.Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    PIL.Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(folder / "photo.jpg")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_with_mixed_modes_and_sizes(tmp_path, channels):
    write_image_folder(tmp_path / "images")
    dataset, column = load_image_dataset(train_data_dir=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 5 and column == "image"
    preprocessing = ImagePreprocessing(resolution=16, channels=channels)
    items = TrainingImages(pretensorize(dataset, column, preprocessing), preprocessing)
    assert all(items[i].shape == (channels, 16, 16) for i in range(5))


def test_saved_dataset_folder_by_name(tmp_path):
    digits = load_digits_dataset("test").select(range(10)).rename_column("image", "picture")
    datasets.DatasetDict({"train": digits}).save_to_disk(tmp_path / "dict")
    digits.save_to_disk(tmp_path / "single")
    for folder in ("dict", "single"):
        dataset, column = load_image_dataset(dataset_name=str(tmp_path / folder))
        assert len(dataset) == 10 and column == "picture"
    with pytest.raises(ValueError, match=r"has splits \['train'\], not 'validation'"):
        load_image_dataset(dataset_name=str(tmp_path / "dict"), split="validation")


# Four pixels of each PIL mode and the 8-bit RGB they stand for (None: the mode is refused). Premultiplied alpha
# (La, RGBa) is divided out, other alpha dropped, a palette expanded; CMYK, YCbCr and HSV follow their formulas.
_PALETTE = [10, 20, 30, 200, 100, 50, 0, 255, 0, 90, 90, 90]
_RGB = [(10, 20, 30), (200, 100, 50), (0, 255, 0), (90, 90, 90)]
_GREY = [0, 64, 128, 255]


def _mode_image(mode: str) -> PIL.Image.Image:
    """A 2×2 image of `mode` holding the pixels of `_expected_rgb(mode)`."""
    if mode == "1":
        return PIL.Image.frombytes("L", (2, 2), bytes([0, 255, 255, 0])).convert("1", dither=PIL.Image.Dither.NONE)
    if mode in ("P", "PA"):
        image = PIL.Image.frombytes(mode, (2, 2), bytes([0, 1, 2, 3] if mode == "P" else [0, 255, 1, 0, 2, 9, 3, 255]))
        image.putpalette(_PALETTE)
        return image
    raw = {
        "L": _GREY,
        "LA": [0, 255, 64, 0, 128, 128, 255, 255],
        "La": [0, 255, 32, 128, 64, 128, 255, 255],  # premultiplied: 32 at alpha 128 is 64 (PIL rounds down)
        "RGB": [c for pixel in _RGB for c in pixel],
        "RGBA": [c for pixel in _RGB for c in (*pixel, 7)],
        "RGBX": [c for pixel in _RGB for c in (*pixel, 0)],
        "RGBa": [10, 20, 30, 255, 100, 50, 25, 128, 0, 255, 0, 255, 45, 45, 45, 128],
        "CMYK": [0, 0, 0, 0, 55, 155, 205, 0, 255, 0, 255, 0, 0, 0, 0, 165],
        "YCbCr": [100, 128, 128, 0, 128, 128, 255, 128, 128, 50, 128, 128],
        "HSV": [0, 255, 255, 85, 255, 255, 170, 255, 255, 0, 0, 90],
        "LAB": [50, 128, 128] * 4,
    }
    if mode in raw:
        return PIL.Image.frombytes(mode, (2, 2), bytes(raw[mode]))
    values = np.array([[0, 300], [40000, 65535]])  # above 255: converting to 8-bit would clip
    return PIL.Image.fromarray(values.astype({"F": np.float32, "I": np.int32}.get(mode, np.uint16))).convert(mode)


def _expected_rgb(mode: str) -> np.ndarray | None:
    grey = {"1": [0, 255, 255, 0], "L": _GREY, "LA": _GREY, "La": [0, 64, 128, 255]}
    rgb = {
        "P": _RGB,
        "PA": _RGB,
        "RGB": _RGB,
        "RGBA": _RGB,
        "RGBX": _RGB,
        "RGBa": [(10, 20, 30), (199, 99, 49), (0, 255, 0), (89, 89, 89)],
        "CMYK": [(255, 255, 255), (200, 100, 50), (0, 255, 0), (90, 90, 90)],  # (255 − C)(255 − K)/255
        "YCbCr": [(100, 100, 100), (0, 0, 0), (255, 255, 255), (50, 50, 50)],  # grey: Cb = Cr = 128
        "HSV": [(255, 0, 0), (0, 255, 0), (0, 0, 255), (90, 90, 90)],
    }
    if mode in grey:
        return np.repeat(np.array(grey[mode], dtype=np.uint8).reshape(2, 2, 1), 3, axis=2)
    return None if mode not in rgb else np.array(rgb[mode], dtype=np.uint8).reshape(2, 2, 3)


ALL_MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]
ALL_MODES += ["I", "I;16", "I;16L", "I;16B", "I;16N", "F"]


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, PIL's RGB → L: L = (299 R + 587 G + 114 B) / 1000, rounded."""
    return np.round(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_pil_mode_keeps_its_values_or_is_refused(mode, channels):
    image = _mode_image(mode)
    assert image.mode == mode
    expected = _expected_rgb(mode)
    preprocessing = ImagePreprocessing(resolution=2, channels=channels)
    if expected is None:
        with pytest.raises(
            ValueError, match=rf"^x\.tif has '{re.escape(mode)}' pixels.*; convert it to 8-bit RGB or L first$"
        ):
            preprocessing.prepare(image, "x.tif")
        return
    prepared = preprocessing.prepare(image, "x.tif")
    wanted = expected.transpose(2, 0, 1) if channels == 3 else _luma(expected)[None]
    # PIL's integer arithmetic for premultiplied alpha, CMYK and YCbCr rounds either way: within one level.
    np.testing.assert_allclose(prepared.astype(int), wanted.astype(int), atol=1)
    if mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "HSV"):
        np.testing.assert_array_equal(prepared, wanted)


# Modes some format writes, and the format: the files go through the training path (pretensorize).
_FILE_FORMATS = {"1": "png", "L": "png", "LA": "png", "P": "png", "PA": "tif", "RGB": "png", "RGBA": "png"}
_FILE_FORMATS |= {"CMYK": "tif", "YCbCr": "tif", "LAB": "tif", "I": "tif", "I;16": "png", "I;16B": "tif", "F": "tif"}


@pytest.mark.parametrize("mode", sorted(_FILE_FORMATS))
def test_training_files_of_every_mode_keep_their_values_or_are_named_and_refused(tmp_path, mode):
    path = tmp_path / f"image.{_FILE_FORMATS[mode]}"
    _mode_image(mode).save(path)
    dataset = datasets.Dataset.from_dict(
        {"image": [{"path": str(path), "bytes": None}]}, features=datasets.Features({"image": datasets.Image()})
    )
    preprocessing = ImagePreprocessing(resolution=2, channels=3)
    expected = _expected_rgb(mode)
    if expected is None:
        with pytest.raises(
            ValueError,
            match=rf"^{re.escape(str(path))} has '{re.escape(PIL.Image.open(path).mode)}' pixels.*8-bit RGB or L",
        ):
            pretensorize(dataset, "image", preprocessing)
        return
    row = pretensorize(dataset, "image", preprocessing)[0]
    stored = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(row["shape"])
    np.testing.assert_allclose(stored.astype(int), expected.transpose(2, 0, 1).astype(int), atol=1)


def test_dataset_paths_may_be_path_objects(tmp_path):
    digits = load_digits_dataset("test").select(range(3))
    digits.save_to_disk(tmp_path / "saved")
    dataset, column = load_image_dataset(dataset_name=tmp_path / "saved")
    assert len(dataset) == 3 and column == "image"
    write_image_folder(tmp_path / "images")
    dataset, _ = load_image_dataset(train_data_dir=tmp_path / "images", cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 5


def test_the_digits_carry_their_labels():
    ids, names = class_labels(load_digits_dataset("train"))
    assert names == [str(k) for k in range(10)] and len(ids) == 1500
    from sklearn.datasets import load_digits

    assert ids == load_digits().target[:1500].tolist()


@pytest.mark.parametrize(
    ("values", "ids", "names"),
    [
        (["dog", "cat", "dog", "owl"], [1, 0, 1, 2], ["cat", "dog", "owl"]),
        ([7, 3, 3, 7], [1, 0, 0, 1], ["3", "7"]),
    ],
)
def test_a_label_column_is_numbered_in_the_sorted_order_of_its_values(values, ids, names):
    dataset = datasets.Dataset.from_dict({"image": [None] * len(values), "kind": values})
    assert class_labels(dataset, "kind") == (ids, names)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["cat", "cat"], "name 1 class"),
        ([1.5, 2.5], "must hold integers or strings"),
        (["cat", None], "must hold integers or strings; image 1 has None"),
    ],
)
def test_unusable_label_columns_are_refused_in_one_line(values, message):
    dataset = datasets.Dataset.from_dict({"image": [None] * len(values), "kind": values})
    with pytest.raises(ValueError, match=message):
        class_labels(dataset, "kind")


def test_an_image_folders_subfolders_are_its_classes(tmp_path):
    for kind in ("circle", "square"):
        (tmp_path / "images" / kind).mkdir(parents=True)
        for i in range(2):
            PIL.Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / "images" / kind / f"{i}.png")
    dataset, _ = load_image_dataset(train_data_dir=tmp_path / "images", cache_dir=str(tmp_path / "cache"))
    assert class_labels(dataset)[1] == ["circle", "square"]
