"""examples/train_unconditional.py on the built-in digits, run as a user runs it: in a subprocess under python,
torchrun or accelerate launch, or forked by tests/training_runner.py (the `training_runner` fixture), which spares each
run the imports. Its numbers are pinned by tests/test_training_reproduces.py; here: what a run leaves, how it
stops, and the one line that answers each bad input."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from hfddpm import DDIMScheduler, HFDDPMPipeline
from hfddpm.records import pipeline_fingerprint
from hfddpm.training.tracking import read_jsonl_log

from .fake_hub import FakeHub

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_unconditional.py"
FAST = [
    "--train_batch_size", "16",
    "--save_images_steps", "1000",
    "--num_sample_images", "4",
    "--num_inference_steps", "3",
    "--logging_steps", "1",
    "--lr_warmup_steps", "5",
    "--report_to", "none",
    "--model_preset", "tiny",
]  # fmt: skip


def command(output_dir, *args):
    return [sys.executable, str(SCRIPT), "--output_dir", str(output_dir), *FAST, *map(str, args)]


def train(output_dir, *args, env=None, check=True, launcher=None, runner=None):
    """Train and return the `CompletedProcess` (with `runner`, forked by it; its console output as stderr)."""
    cmd = command(output_dir, *args)
    if runner is not None:
        console = Path(output_dir).with_name(f"{Path(output_dir).name}.console.txt")
        runner.start(cmd[2:], console, env=env)
        result = subprocess.CompletedProcess(cmd, runner.wait(), "", console.read_text())
    else:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        result = subprocess.run(
            [*(launcher or [sys.executable]), *cmd[1:]], capture_output=True, text=True, env=full_env
        )
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def weights(output_dir):
    return load_file(Path(output_dir) / "unet" / "diffusion_pytorch_model.safetensors")


def same_weights(first, second) -> bool:
    first, second = weights(first), weights(second)
    return all(torch.equal(first[name], second[name]) for name in first)


def resume_copy(run: Path, step: int, to: Path) -> Path:
    """A new folder holding `run`'s checkpoint-`step` and record, as a run killed after that checkpoint leaves it."""
    shutil.copytree(run / "checkpoints" / f"checkpoint-{step}", to / "checkpoints" / f"checkpoint-{step}")
    shutil.copy(run / "training_args.json", to)  # the mark of a run's folder
    return to


@pytest.mark.slow
def test_a_class_conditional_run_leaves_a_pipeline_grids_logs_and_card_and_resumes_exactly(tmp_path, training_runner):
    args = [
        "--class_conditional",
        "--max_train_steps",
        "20",
        "--checkpointing_steps",
        "10",
        "--save_images_steps",
        "10",
    ]
    train(tmp_path / "run", *args, runner=training_runner)
    run = tmp_path / "run"
    assert (run / "samples" / "step_0000010.png").is_file() and (run / "samples" / "final.png").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-10"]
    log = read_jsonl_log(run / "logs" / "train.jsonl")
    assert sum(log[s]["loss"] for s in range(16, 21)) < 0.5 * sum(log[s]["loss"] for s in range(1, 6))  # it learns
    assert log[20]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine schedule reaches its end
    pipe = HFDDPMPipeline.from_pretrained(run)
    assert type(pipe.scheduler) is DDIMScheduler and pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.id2label == {k: str(k) for k in range(10)} and pipe.unet.config.num_class_embeds == 11
    card = (run / "README.md").read_text()
    assert "class-conditional image generation" in card and "label dropout p = 0.1" in card
    pipe.set_progress_bar_config(disable=True)
    image = pipe(class_labels=3, generator=torch.manual_seed(0), num_inference_steps=3).images[0]
    assert image.size == (8, 8) and image.mode == "L"
    # The label dropout draws from the run's generator, which the checkpoint holds: the resumed run ends with the
    # uninterrupted run's weights.
    train(
        resume_copy(run, 10, tmp_path / "resumed"), *args, "--resume_from_checkpoint", "latest", runner=training_runner
    )
    assert same_weights(run, tmp_path / "resumed")


@pytest.mark.slow
def test_the_bound_with_importance_sampling_resumes_exactly(tmp_path, training_runner):
    # Pure L_vlb with p_t ∝ √E[L_t²]: the sampler's loss history is the objective's checkpointed state, so a run
    # resumed from checkpoint-30 ends with the uninterrupted run's weights. T = 20 lets the warm-up end by then.
    args = ["--max_train_steps", "40", "--checkpointing_steps", "30", "--num_train_timesteps", "20"]
    args += ["--loss_type", "vlb", "--timestep_sampling", "loss_second_moment", "--reverse_variance", "learned_range"]
    train(tmp_path / "whole", *args, runner=training_runner)
    assert (
        load_file(tmp_path / "whole" / "checkpoints" / "checkpoint-30" / "objective.safetensors")["counts"].min() == 10
    )
    train(resume_copy(tmp_path / "whole", 30, tmp_path / "resumed"), *args, "--resume_from_checkpoint", "latest",
          runner=training_runner)  # fmt: skip
    assert same_weights(tmp_path / "whole", tmp_path / "resumed")


@pytest.mark.slow
def test_gradient_checkpointing_changes_nothing_but_memory(tmp_path, training_runner):
    args = ["--max_train_steps", "4", "--prediction_type", "v_prediction", "--beta_schedule", "cosine"]
    train(tmp_path / "plain", *args, runner=training_runner)
    train(tmp_path / "checkpointed", *args, "--gradient_checkpointing", runner=training_runner)
    plain, checkpointed = (
        read_jsonl_log(tmp_path / name / "logs" / "train.jsonl") for name in ("plain", "checkpointed")
    )
    assert [plain[s]["loss"] for s in range(1, 5)] == pytest.approx([checkpointed[s]["loss"] for s in range(1, 5)])


@pytest.mark.slow
def test_metrics_are_logged_during_training_and_recorded_at_the_end(tmp_path, training_runner):
    args = ["--max_train_steps", "20", "--eval_every", "10", "--eval_num_samples", "16", "--report_to", "tensorboard"]
    train(tmp_path / "run", *args, env={"HFDDPM_CACHE": str(tmp_path / "cache")}, runner=training_runner)
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))  # TensorBoard takes the list-valued args
    log = read_jsonl_log(tmp_path / "run" / "logs" / "train.jsonl")
    assert all(log[step]["eval/fd_digits"] > 0 and "eval/digits_confidence" in log[step] for step in (10, 20))
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert report["metrics"]["fd_digits"] == log[20]["eval/fd_digits"]
    # measured on the weights saved beside it, so the card shows it as theirs
    assert report["weights"] == pipeline_fingerprint(tmp_path / "run")
    assert f"{report['metrics']['fd_digits']:.4f}" in (tmp_path / "run" / "README.md").read_text()


@pytest.mark.slow
def test_an_earlier_run_is_not_overwritten_by_accident(tmp_path, training_runner):
    train(tmp_path / "run", "--max_train_steps", "3", runner=training_runner)
    before = weights(tmp_path / "run")
    result = train(tmp_path / "run", "--max_train_steps", "3", "--seed", "1", check=False, runner=training_runner)
    assert result.returncode == 2 and "holds an earlier run; pass --resume_from_checkpoint latest" in result.stderr
    # A finished run without checkpoints has nothing to resume from: "latest" does not silently start it again.
    result = train(tmp_path / "run", "--resume_from_checkpoint", "latest", check=False, runner=training_runner)
    assert result.returncode == 2 and "holds a finished run without checkpoints" in result.stderr
    assert all(torch.equal(before[k], v) for k, v in weights(tmp_path / "run").items())
    # A bad input found after the folder check (here the data) is refused before the earlier run is deleted.
    result = train(
        tmp_path / "run", "--split", "validation", "--overwrite_output_dir", check=False, runner=training_runner
    )
    assert result.returncode == 2 and (tmp_path / "run" / "model_index.json").is_file()
    train(tmp_path / "run", "--max_train_steps", "3", "--seed", "1", "--overwrite_output_dir", runner=training_runner)
    assert not all(torch.equal(before[k], v) for k, v in weights(tmp_path / "run").items())


@pytest.mark.slow
def test_a_run_publishes_its_pipeline_and_card_and_never_writes_the_token(tmp_path):
    token = "hf_secretTokenForTheTrainingRun42"
    args = ["--max_train_steps", "4", "--save_model_steps", "2", "--push_to_hub", "--hub_model_id", "user/tiny-run"]
    args += [
        "--hub_token",
        token,
        "--hub_push_intermediate",
        "--checkpointing_steps",
        "2",
        "--report_to",
        "tensorboard",
    ]
    with FakeHub() as hub:
        result = train(tmp_path / "run", *args, env={"HF_ENDPOINT": hub.endpoint})
    assert token not in result.stdout + result.stderr
    commits = hub.repos["user/tiny-run"]["commits"]
    assert [c["message"] for c in commits] == ["Pipeline at step 2", "Pipeline at step 4", "Final pipeline"]
    published = hub.published("user/tiny-run")
    assert "README.md" in published and "unet/diffusion_pytorch_model.safetensors" in published
    assert not any(name.startswith(("checkpoints/", "logs/")) for name in published)
    assert "| optimizer steps | 4, batch 16" in published["README.md"].decode()
    every_file = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name.startswith("events.out.tfevents") for p in every_file)  # TensorBoard's hparams
    assert all(token.encode() not in p.read_bytes() for p in every_file)  # logs, args, card, checkpoints
    assert all(token.encode() not in content for content in published.values())


@pytest.mark.slow
def test_two_processes_stop_together_on_sigterm_and_resume_with_identical_replicas(tmp_path):
    # torchrun passes SIGTERM to both workers; they agree at the next step, save one checkpoint together, and exit.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    run, args, env = (
        tmp_path / "ddp",
        ["--max_train_steps", "12"],
        {"ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"},
    )
    stopped = subprocess.Popen(
        [*launcher, *command(run, *args)[1:]], stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    stderr = stop_after_logged_steps(stopped, run, 3)
    [step] = re.findall(r"SIGTERM: stopped at step (\d+) and saved checkpoint-\1", stderr)  # said once, by rank 0
    checkpoint = run / "checkpoints" / f"checkpoint-{step}"
    assert int(step) < 12 and all((checkpoint / f"randomness_{rank}.safetensors").is_file() for rank in (0, 1))
    train(run, *args, "--resume_from_checkpoint", "latest", env=env, launcher=launcher)
    log = read_jsonl_log(run / "logs" / "train.jsonl")
    assert log[12]["num_processes"] == 2 and "replica_checksum" in log[12]  # the replicas were checked equal


def stop_after_logged_steps(process: subprocess.Popen, run: Path, steps: int, child: bool = False) -> str:
    """SIGTERM `process` (or, with `child`, its one child process) once `run` has logged `steps` steps; the
    process's stderr."""
    log, deadline = run / "logs" / "train.jsonl", time.time() + 300
    while not (log.is_file() and log.read_text().count('"step": ') >= steps) and time.time() < deadline:
        time.sleep(0.05)
    pid = process.pid
    if child:
        [pid] = map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    os.kill(pid, signal.SIGTERM)
    return process.communicate(timeout=300)[1]


@pytest.mark.slow
def test_accelerate_launch_with_the_shipped_config_is_quiet_and_reports_a_stop_as_status_1(tmp_path):
    """The README's launch: no list of defaults accelerate filled in. A SIGTERM to the training process saves and
    stops it as under python, but accelerate's launcher turns its 143 into 1 (and, without -q, its own traceback)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file"]
    launch += [str(SCRIPT.parent / "accelerate_config.yaml")]
    run = tmp_path / "run"
    launcher = subprocess.Popen(
        [*launch, *command(run, "--max_train_steps", "2000")[1:]],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stderr = stop_after_logged_steps(launcher, run, 2, child=True)  # the training process, not its launcher
    assert launcher.returncode == 1 and "Traceback" not in stderr and "had defaults used instead" not in stderr
    [step] = re.findall(r"SIGTERM: stopped at step (\d+) and saved checkpoint-\1", stderr)
    assert (run / "checkpoints" / f"checkpoint-{step}" / "training_state.json").is_file()


def image_folder(folder: Path, images: dict[str, PIL.Image.Image]) -> Path:
    folder.mkdir(parents=True)
    for name, image in images.items():
        image.save(folder / name)
    return folder


def grey(size=12):
    return PIL.Image.fromarray(np.arange(size * size, dtype=np.uint8).reshape(size, size), mode="L")


def truncated(tmp: Path) -> list:
    folder = image_folder(tmp / "images", {"good.png": grey(), "cut.png": grey(64)})
    data = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return ["--train_data_dir", folder]


def file_as(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp / name


# id: arguments, or a function of the test folder returning them; the words the one error line must hold. Every
# case exits with status 2 and writes no model: the numbers' own bounds are tests/test_training_config.py's.
BAD_INPUTS = {
    "missing image folder": (["--train_data_dir", "no/such/folder"], ["is not a folder", "point it at"]),
    "empty image folder": (
        lambda tmp: ["--train_data_dir", image_folder(tmp / "empty", {})],
        ["holds no image files"],
    ),
    "corrupt image": (
        lambda tmp: [
            "--train_data_dir",
            file_as(image_folder(tmp / "i", {"a.png": grey()}), "bad.png", "no PNG").parent,
        ],
        ["cannot read", "bad.png", "remove or replace the file"],
    ),
    "truncated image": (truncated, ["cannot read", "cut.png", "remove or replace"]),
    "mixed grayscale and colour": (
        lambda tmp: ["--train_data_dir", image_folder(tmp / "i", {"a.png": grey(), "b.png": grey().convert("RGB")})],
        ["mix grayscale and colour (1 of 2", "--channels 3"],
    ),
    "resolution the UNet cannot halve": (
        ["--model_preset", "digits", "--resolution", "10"],
        ["sample_size=10 is not divisible by 4", "8 or 12"],
    ),
    "model config not JSON": (
        lambda tmp: ["--model_config", file_as(tmp, "config.json", "{not json")],
        ["--model_config", "does not make a unet2dmodel", "fix the file"],
    ),
    "a model config's class embedding without --class_conditional": (
        lambda tmp: ["--model_config", file_as(tmp, "config.json", '{"num_class_embeds": 11}')],
        ["has a class embedding", "pass --class_conditional"],
    ),
    "fp16 on a CPU": (["--mixed_precision", "fp16"], ["fp16 needs a gpu", "bf16"]),
    "unknown split": (["--split", "validation"], ["splits 'train' and 'test'", "'validation'"]),
    "unknown image column": (["--image_column", "picture"], ["'picture' is not a column", "['image', 'label']"]),
    "dataset name and image folder together": (
        ["--dataset_name", "digits", "--train_data_dir", "."],
        ["either --dataset_name or --train_data_dir"],
    ),
    "an image folder without class subfolders": (
        lambda tmp: ["--class_conditional", "--train_data_dir", image_folder(tmp / "i", {"a.png": grey()})],
        ["needs class labels", "--label_column"],
    ),
    "an unknown label column": (["--class_conditional", "--label_column", "digit"], ["'digit' is not a column"]),
    "a number out of range": (["--train_batch_size", "0"], ["--train_batch_size must be in [1, inf)"]),
    "an unknown choice": (["--prediction_type", "noise"], ["invalid choice: 'noise'"]),
    "output folder that is a file": (lambda tmp: ["--output_dir", file_as(tmp, "taken", "")], ["is a file"]),
    "resume from a folder that is no checkpoint": (["--resume_from_checkpoint", "."], ["not a complete checkpoint"]),
}


def run_script(training_runner, tmp_path: Path, argv: list) -> tuple[int, str]:
    console = tmp_path / "console.txt"
    training_runner.start(["--output_dir", tmp_path / "run", *FAST, *argv], console)  # a case's own --output_dir wins
    return training_runner.wait(), console.read_text()


def assert_one_error_line(console: str, words: list[str]) -> None:
    assert "Traceback" not in console
    [error] = [line for line in console.splitlines() if "error:" in line]
    assert all(word.lower() in error.lower() for word in words), error


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_the_script_refuses_bad_input_in_one_line(tmp_path, training_runner, case):
    argv, words = BAD_INPUTS[case]
    returncode, console = run_script(training_runner, tmp_path, argv(tmp_path) if callable(argv) else argv)
    assert returncode == 2
    assert_one_error_line(console, words)
    assert not (tmp_path / "run" / "model_index.json").exists()


class MaliciousPickle:
    """Unpickling it creates the file `marker`: what a tampered checkpoint could do with an unrestricted load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def tampered(folder: Path) -> None:
    with open(folder / "optimizer.bin", "wb") as file:
        pickle.dump(MaliciousPickle(folder.parents[2] / "pwned"), file)


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, training_runner) -> Path:
    """A run of 3 steps with a checkpoint at step 2."""
    run = tmp_path_factory.mktemp("checkpointed") / "run"
    training_runner.start(["--output_dir", run, *FAST, "--max_train_steps", "3", "--checkpointing_steps", "2"],
                          run.parent / "console.txt")  # fmt: skip
    assert training_runner.wait() == 0
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda folder: (folder / "optimizer.bin").unlink(), ["cannot resume from", "optimizer.bin", "earlier"]),
        (tampered, ["cannot resume from", "pickle that would run code"]),
        (lambda folder: (folder / "model.safetensors").write_bytes(b"\0" * 10), ["cannot resume from", "start over"]),
    ],
    ids=["missing optimizer state", "a pickle that runs code", "torn weights"],
)
def test_a_damaged_checkpoint_is_refused_in_one_line_and_left_as_it_was(
    tmp_path, training_runner, checkpointed_run, damage, words
):
    checkpoint = resume_copy(checkpointed_run, 2, tmp_path / "run") / "checkpoints" / "checkpoint-2"
    damage(checkpoint)
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    returncode, console = run_script(
        training_runner, tmp_path, ["--resume_from_checkpoint", "latest", "--max_train_steps", "3"]
    )
    assert returncode == 1
    assert_one_error_line(console, words)
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    assert not (tmp_path / "pwned").exists()  # the tampered pickle never ran
