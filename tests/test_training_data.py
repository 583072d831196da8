"""Training data: the built-in digits, image folders, saved datasets, preprocessing and seeded augmentation."""

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from hfddpm.image_data import (
    ImagePreprocessing,
    TrainingImages,
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


def test_corrupt_image_is_named(tmp_path):
    write_image_folder(tmp_path / "images")
    good = (tmp_path / "images" / "rgb.png").read_bytes()
    (tmp_path / "images" / "truncated.png").write_bytes(good[: len(good) // 3])
    dataset, column = load_image_dataset(train_data_dir=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"cannot read .*truncated\.png.*remove or replace the file"):
        pretensorize(dataset, column, ImagePreprocessing(resolution=16))


def test_saved_dataset_folder_by_name(tmp_path):
    digits = load_digits_dataset("test").select(range(10)).rename_column("image", "picture")
    datasets.DatasetDict({"train": digits}).save_to_disk(tmp_path / "dict")
    digits.save_to_disk(tmp_path / "single")
    for folder in ("dict", "single"):
        dataset, column = load_image_dataset(dataset_name=str(tmp_path / folder))
        assert len(dataset) == 10 and column == "picture"
    with pytest.raises(ValueError, match=r"has splits \['train'\], not 'validation'"):
        load_image_dataset(dataset_name=str(tmp_path / "dict"), split="validation")


def test_bad_data_arguments(tmp_path):
    with pytest.raises(ValueError, match="either --dataset_name or --train_data_dir"):
        load_image_dataset(dataset_name="x", train_data_dir="y")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_image_dataset(train_data_dir=str(tmp_path / "missing"))
    with pytest.raises(
        ValueError, match=r"--image_column 'img' is not a column; the columns are \['image', 'label'\]"
    ):
        load_image_dataset(image_column="img")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="'.*empty' holds no image files; add images or fix the path"):
        load_image_dataset(train_data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="channels must be 1"):
        ImagePreprocessing(resolution=8, channels=2)
