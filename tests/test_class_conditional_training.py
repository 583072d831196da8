"""Class-conditional training: labels from every kind of dataset, label dropout, the saved names, exact resume."""

import json
import shutil

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from hfddpm import HFDDPMPipeline
from hfddpm.image_data import class_labels, load_digits_dataset
from hfddpm.training.objectives import drop_labels

from .test_train_script import train, weights


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


def test_label_dropout_replaces_a_share_p_of_labels_with_no_label():
    labels = torch.randint(0, 10, (20_000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(labels, 10, 0.2, torch.Generator().manual_seed(1))
    share = (dropped == 10).double().mean().item()
    assert abs(share - 0.2) < 4 * (0.2 * 0.8 / 20_000) ** 0.5  # four binomial standard errors
    assert torch.equal(dropped[dropped != 10], labels[dropped != 10])
    assert drop_labels(labels, 10, 0.0, torch.Generator()) is labels


@pytest.mark.slow
def test_a_class_conditional_run_saves_its_classes_and_resumes_exactly(tmp_path, training_runner):
    args = ["--class_conditional", "--max_train_steps", "20", "--checkpointing_steps", "10", "--seed", "3"]
    train(tmp_path / "whole", *args, runner=training_runner)
    pipe = HFDDPMPipeline.from_pretrained(tmp_path / "whole")
    assert pipe.num_classes == 10 and pipe.id2label == {k: str(k) for k in range(10)}
    assert pipe.unet.config.num_class_embeds == 11
    card = (tmp_path / "whole" / "README.md").read_text()
    assert "class-conditional image generation" in card and "label dropout p = 0.1" in card
    assert json.loads((tmp_path / "whole" / "training_args.json").read_text())["class_dropout_prob"] == 0.1
    # The label dropout draws from the run's generator, which the checkpoint holds: the resumed run drops the same
    # labels and ends with the uninterrupted run's weights.
    shutil.copytree(
        tmp_path / "whole" / "checkpoints" / "checkpoint-10", tmp_path / "resumed" / "checkpoints" / "checkpoint-10"
    )
    shutil.copy(tmp_path / "whole" / "training_args.json", tmp_path / "resumed")  # the mark of a run's folder
    train(tmp_path / "resumed", *args, "--resume_from_checkpoint", "latest", runner=training_runner)
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


@pytest.mark.slow
def test_an_image_folders_subfolders_and_a_saved_datasets_column_are_the_classes(tmp_path, training_runner):
    rng = np.random.default_rng(0)
    for kind in ("circle", "square"):
        (tmp_path / "images" / kind).mkdir(parents=True)
        for i in range(4):
            PIL.Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                tmp_path / "images" / kind / f"{i}.png"
            )
    args = ["--class_conditional", "--max_train_steps", "2"]
    train(tmp_path / "folder-run", "--train_data_dir", tmp_path / "images", *args, runner=training_runner)
    assert HFDDPMPipeline.from_pretrained(tmp_path / "folder-run").id2label == {0: "circle", 1: "square"}

    images = [PIL.Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(6)]
    saved = datasets.Dataset.from_dict(
        {"image": images, "kind": ["tree", "bird", "tree", "fish", "bird", "fish"]},
        features=datasets.Features({"image": datasets.Image(), "kind": datasets.Value("string")}),
    )
    saved.save_to_disk(tmp_path / "saved")
    train(
        tmp_path / "column-run", "--dataset_name", tmp_path / "saved", "--label_column", "kind", *args,
        "--reverse_variance", "learned_range", runner=training_runner,
    )  # fmt: skip
    pipe = HFDDPMPipeline.from_pretrained(tmp_path / "column-run")
    assert pipe.id2label == {0: "bird", 1: "fish", 2: "tree"} and pipe.unet.config.out_channels == 2
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=["fish", "tree"], guidance_scale=3.0, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
