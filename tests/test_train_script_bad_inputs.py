"""examples/train_unconditional.py answers each bad input with one line naming the problem and the fix.

Each case runs the script (forked by tests/training_runner.py) and checks its exit status, that stderr holds
exactly one error line and no traceback, and the words of that line. The library's own refusals are in
tests/test_bad_inputs.py; docs/reliability.md lists both.
"""

import pickle
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from .test_train_script import FAST


def image_folder(folder: Path, images: dict[str, PIL.Image.Image]) -> Path:
    folder.mkdir(parents=True)
    for name, image in images.items():
        image.save(folder / name)
    return folder


def grey(size=12):
    return PIL.Image.fromarray(np.arange(size * size, dtype=np.uint8).reshape(size, size), mode="L")


def corrupt(tmp: Path) -> list[str]:
    folder = image_folder(tmp / "images", {"good.png": grey()})
    (folder / "bad.png").write_bytes(b"this is not a PNG file")
    return ["--train_data_dir", folder]


def truncated(tmp: Path) -> list[str]:
    folder = image_folder(tmp / "images", {"good.png": grey(), "cut.png": grey(64)})
    data = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return ["--train_data_dir", folder]


def mixed_colour(tmp: Path) -> list[str]:
    colour = PIL.Image.merge("RGB", [grey()] * 3)
    return ["--train_data_dir", image_folder(tmp / "images", {"a.png": grey(), "b.png": colour, "c.png": grey(20)})]


def file_as(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp / name


class MaliciousPickle:
    """Unpickling it creates the file `marker`: what a tampered checkpoint could do with an unrestricted load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, training_runner) -> Path:
    """A complete checkpoint of a 2-step run."""
    run = tmp_path_factory.mktemp("checkpointed") / "run"
    argv = ["--output_dir", run, *FAST, "--max_train_steps", "3", "--checkpointing_steps", "2"]
    training_runner.start(argv, run.parent / "console.txt")
    assert training_runner.wait() == 0
    return run / "checkpoints" / "checkpoint-2"


def damaged_checkpoint(tmp: Path, source: Path, damage) -> list[str]:
    copy = tmp / "run" / "checkpoints" / source.name
    shutil.copytree(source, copy)
    shutil.copy(source.parents[1] / "training_args.json", tmp / "run")  # the run's record: a run wrote the folder
    damage(copy)
    return ["--resume_from_checkpoint", "latest", "--max_train_steps", "3"]


def tampered(folder: Path) -> None:
    with open(folder / "optimizer.bin", "wb") as file:
        pickle.dump(MaliciousPickle(folder.parents[2] / "pwned"), file)


CASES = {
    # id: (arguments, or a function of the test folder returning them; exit status; words of the error line)
    "missing image folder": (["--train_data_dir", "no/such/folder"], 2, ["is not a folder", "point it at"]),
    "empty image folder": (
        lambda tmp: ["--train_data_dir", (tmp / "empty").mkdir() or tmp / "empty"],
        2,
        ["holds no image files", "add images"],
    ),
    "corrupt image": (corrupt, 2, ["cannot read", "bad.png", "remove or replace the file"]),
    "truncated image": (truncated, 2, ["cannot read", "cut.png", "truncated", "remove or replace"]),
    "mixed grayscale and colour": (mixed_colour, 2, ["mix grayscale and colour (1 of 3", "--channels 3"]),
    "resolution not divisible by the UNet's downsampling": (["--resolution", "10"], 2, ["10", "divisible by 4"]),
    "fp16 on a CPU": (["--mixed_precision", "fp16"], 2, ["fp16 needs a gpu", "bf16"]),
    "unknown split": (["--split", "validation"], 2, ["splits 'train' and 'test'", "'validation'"]),
    "unknown image column": (["--image_column", "picture"], 2, ["'picture' is not a column", "['image', 'label']"]),
    "dataset name and image folder together": (
        ["--dataset_name", "digits", "--train_data_dir", "."],
        2,
        ["either --dataset_name or --train_data_dir"],
    ),
    "batch size 0": (["--train_batch_size", "0"], 2, ["--train_batch_size must be at least 1, got 0"]),
    "unknown prediction type": (["--prediction_type", "noise"], 2, ["invalid choice: 'noise'", "epsilon"]),
    "resolution not divisible by a model config's downsampling": (
        lambda tmp: [
            "--resolution",
            "6",
            "--model_config",
            file_as(tmp, "config.json", '{"block_out_channels": [8, 16, 16]}'),
        ],
        2,
        ["sample_size=6 is not divisible by 4", "config.json", "such as 4 or 8"],
    ),
    "missing model config": (["--model_config", "no/config.json"], 2, ["does not exist", "fix the path"]),
    "model config not JSON": (
        lambda tmp: ["--model_config", file_as(tmp, "config.json", "{not json")],
        2,
        ["is not valid json", "fix the file"],
    ),
    "loss that cannot train the variance": (
        ["--loss_type", "hybrid"],
        2,
        ["needs a learned variance", "--reverse_variance"],
    ),
    "non-finite learning rate": (["--learning_rate", "nan"], 2, ["--learning_rate must be a finite number", "nan"]),
    "infinite gradient clipping norm": (["--max_grad_norm", "inf"], 2, ["--max_grad_norm must be a finite number"]),
    "Adam beta of 1": (["--adam_beta2", "1"], 2, ["--adam_beta2 must be a finite number in [0, 1)", "got 1.0"]),
    "EMA decay above 1": (["--ema_max_decay", "1.5"], 2, ["--ema_max_decay must be a finite number in [0, 1]"]),
    "negative seed": (["--seed", "-1"], 2, ["--seed must be in [0, 4294967295]", "got -1"]),
    "negative warm-up": (["--lr_warmup_steps", "-5"], 2, ["--lr_warmup_steps must be at least 0", "got -5"]),
    "output directory is a file": (
        lambda tmp: ["--output_dir", file_as(tmp, "taken", "")],
        2,
        ["is a file", "choose a folder"],
    ),
    "malformed Hub repo id": (
        ["--push_to_hub", "--hub_model_id", "a/b/c"],
        2,
        ["'a/b/c' is not a hub repository id", "user/name"],
    ),
    "resume from a folder that is not a checkpoint": (
        ["--resume_from_checkpoint", "."],
        2,
        ["not a complete checkpoint", "use 'latest'"],
    ),
    "evaluation without metrics on an image folder": (
        lambda tmp: ["--train_data_dir", image_folder(tmp / "images", {"a.png": grey()}), "--eval_every", "5"],
        2,
        ["--eval_every needs --eval_metrics", "fid, fd_dinov2 or bits_per_dim"],
    ),
    "label column without --class_conditional": (
        ["--label_column", "label"],
        2,
        ["--label_column is for class-conditional training", "add --class_conditional"],
    ),
    "label dropout of 1": (
        ["--class_conditional", "--class_dropout_prob", "1"],
        2,
        ["--class_dropout_prob must be a finite number in (0, 1)", "got 1.0"],
    ),
    "no label dropout": (
        ["--class_conditional", "--class_dropout_prob", "0"],
        2,
        ["in (0, 1)", "'no label' embedding that guidance needs untrained"],
    ),
    "non-finite label dropout": (
        ["--class_conditional", "--class_dropout_prob", "nan"],
        2,
        ["finite number in (0, 1)"],
    ),
    "class-conditional on an image folder without subfolders": (
        lambda tmp: [
            "--class_conditional",
            "--train_data_dir",
            image_folder(tmp / "images", {"a.png": grey(), "b.png": grey()}),
        ],
        2,
        ["needs class labels", "none of the columns ['image'] is a classlabel", "--label_column"],
    ),
    "unknown label column": (
        ["--class_conditional", "--label_column", "digit"],
        2,
        ["--label_column 'digit' is not a column", "['image', 'label']"],
    ),
    "an image folder of one subfolder": (
        lambda tmp: [
            "--class_conditional",
            "--train_data_dir",
            image_folder(tmp / "images" / "cats", {"a.png": grey(), "b.png": grey()}).parent,
        ],
        2,
        ["needs class labels", "two or more subfolders"],
    ),
    "a model config with a class embedding but no --class_conditional": (
        lambda tmp: ["--model_config", file_as(tmp, "config.json", '{"num_class_embeds": 11}')],
        2,
        ["has a class embedding", "pass --class_conditional"],
    ),
    "intermediate pushes without saves": (
        ["--hub_push_intermediate", "--push_to_hub", "--hub_model_id", "u/m"],
        2,
        ["needs --push_to_hub and --save_model_steps"],
    ),
}
CHECKPOINT_CASES = {
    "checkpoint missing its optimizer state": (
        lambda folder: (folder / "optimizer.bin").unlink(),
        ["cannot resume from", "optimizer.bin", "resume from an earlier checkpoint"],
    ),
    "checkpoint holding a pickle that runs code": (
        tampered,
        ["cannot resume from", "pickle that would run code", "weights_only"],
    ),
    "checkpoint with torn weights": (
        lambda folder: (folder / "model.safetensors").write_bytes(b"\0" * 10),
        ["cannot resume from", "start over"],
    ),
}


def run_script(training_runner, tmp_path: Path, argv: list) -> tuple[int, str]:
    console = tmp_path / "console.txt"
    argv = ["--output_dir", tmp_path / "run", *FAST, *argv]  # a case's own --output_dir comes later and wins
    training_runner.start(argv, console)
    return training_runner.wait(), console.read_text()


def assert_one_error_line(console: str, words: list[str]) -> None:
    assert "Traceback" not in console
    [error] = [line for line in console.splitlines() if "error:" in line]
    assert all(word in error.lower() for word in (w.lower() for w in words)), error


@pytest.mark.parametrize("case", CASES)
def test_training_script_refuses_bad_input_in_one_line(tmp_path, training_runner, case):
    argv, status, words = CASES[case]
    argv = argv(tmp_path) if callable(argv) else argv
    returncode, console = run_script(training_runner, tmp_path, argv)
    assert returncode == status
    assert_one_error_line(console, words)
    assert not (tmp_path / "run" / "model_index.json").exists()


@pytest.mark.slow  # its fixture trains a run to damage
@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_damaged_checkpoint_is_refused_in_one_line_and_left_as_it_was(tmp_path, training_runner, checkpoint, case):
    damage, words = CHECKPOINT_CASES[case]
    argv = damaged_checkpoint(tmp_path, checkpoint, damage)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints" / "checkpoint-2").iterdir()}
    returncode, console = run_script(training_runner, tmp_path, argv)
    assert returncode == 1
    assert_one_error_line(console, words)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints" / "checkpoint-2").iterdir()}
    assert after == before
    assert not (tmp_path / "pwned").exists()  # the tampered pickle never ran
