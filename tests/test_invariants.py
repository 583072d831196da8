"""Nothing lost by design: each invariant of docs/reliability.md, through every command that must go through it.

1. validate, then destroy; 2. inputs are never outputs; 3. a resume continues the same run; 4. records describe the
weights they sit beside, and every writer holds the run's lock; 5. what is published loads; 6. text from data is
data (tests/test_hub.py); 7. every record is read through one reader; 8. long work starts only when it can finish.
A refusal is one line, status 2, and leaves every file as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from hfddpm.arguments import check_fits_in_memory
from hfddpm.cli import main
from hfddpm.records import SHAPES, RecordError, read_record
from hfddpm.run_folder import LOCK_FILE, RUN_RECORD, recorded_data, run_lock
from hfddpm.training import TrainingConfig
from hfddpm.training.artefacts import save_pipeline
from hfddpm.training.faults import CheckpointError

from .test_distillation import distill_consistency_command, distill_progressive_command
from .test_train_script import FAST
from .training_runner import train_unconditional_command

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
DISTIL = ["--train_batch_size", "8", "--num_sample_images", "4", "--report_to", "none", "--save_images_steps", "1000"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (links not followed, the lock file aside: it names its last holder):
    what a refused command must leave as it was."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def refused(command, argv, capsys) -> str:
    """The one error line of a command (`hfddpm` when `command` is None) that must refuse with status 2."""
    try:
        status = (command or main)([str(part) for part in argv])
    except SystemExit as exit_info:
        status = exit_info.code
    stderr = capsys.readouterr().err  # besides the error line, progress bars of datasets may be there
    errors = [line for line in stderr.splitlines() if "error: " in line]
    assert status == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


def image_folder(folder: Path, count: int = 16, size: int = 8, classes: bool = False) -> Path:
    """`count` random grey PNGs, in class subfolders `a` and `b` if `classes`."""
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / ("ab"[i % 2] if classes else "") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return folder


def train(folder: Path, *argv) -> int:
    return train_unconditional_command(["--output_dir", str(folder), *FAST, "--max_train_steps", "2", *map(str, argv)])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run of 3 steps on a 16-image folder, checkpointed at step 2, with its records and card."""
    root = tmp_path_factory.mktemp("invariants")
    data = image_folder(root / "data")
    assert train(root / "run", "--train_data_dir", data, "--checkpointing_steps", "2", "--max_train_steps", "3") == 0
    return root / "run"


@pytest.fixture
def run(finished_run, tmp_path):
    shutil.copytree(finished_run.parent / "data", tmp_path / "data")
    return shutil.copytree(finished_run, tmp_path / "run")


# 1. Validate, then destroy


def corrupt_image(data: Path) -> list:
    (data / "0.png").write_bytes(b"not a png")
    return ["--train_data_dir", data]


def unlabelled_for_class_conditional(data: Path) -> list:
    return ["--train_data_dir", data, "--class_conditional"]


def missing_column(data: Path) -> list:
    return ["--train_data_dir", data, "--image_column", "pixels"]


@pytest.mark.parametrize("bad_input", [corrupt_image, unlabelled_for_class_conditional, missing_column])
def test_an_overwrite_refused_for_its_input_keeps_the_earlier_run(run, capsys, bad_input):
    before = snapshot(run)
    argv = ["--output_dir", run, *FAST, "--overwrite_output_dir", *bad_input(run.parent / "data")]
    refused(train_unconditional_command, argv, capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "command, options",
    [
        (distill_progressive_command, ["--teacher_steps", "4", "--final_steps", "2"]),
        (distill_consistency_command, ["--num_inference_steps", "2"]),
    ],
    ids=["progressive", "consistency"],
)
def test_a_distillation_refused_for_its_data_keeps_the_earlier_student(run, tmp_path, capsys, command, options):
    student = tmp_path / "student"
    argv = ["--teacher", run, "--output_dir", student, *DISTIL, *options]
    assert command([*map(str, argv), "--max_train_steps", "1"]) == 0
    before = snapshot(student)
    refused(command, [*argv, *corrupt_image(run.parent / "data"), "--overwrite_output_dir"], capsys)
    assert snapshot(student) == before


@pytest.mark.parametrize("name", ["samples", "logs"])
def test_a_linked_output_is_refused_before_anything_is_deleted(run, tmp_path, capsys, name):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mine.txt").write_text("mine")
    shutil.rmtree(run / name, ignore_errors=True)
    (run / name).symlink_to(tmp_path / "elsewhere")
    before = snapshot(run)
    line = refused(train_unconditional_command, ["--output_dir", run, *FAST, "--overwrite_output_dir"], capsys)
    assert f"{name} is a link" in line and snapshot(run) == before and (tmp_path / "elsewhere" / "mine.txt").exists()


# 2. Inputs are never outputs


INPUTS_AND_OUTPUTS = {
    "training into its data": (train_unconditional_command, "--train_data_dir {data} --output_dir {data}/run"),
    "progressive into its teacher": (distill_progressive_command, "--teacher {run} --output_dir {run}"),
    "progressive with its teacher as a round": (distill_progressive_command, "--teacher {run} --output_dir {tmp}"),
    "consistency into its teacher": (distill_consistency_command, "--teacher {run} --output_dir {run}/student"),
    "export into its run": (None, "push {run} --repo_id u/x --export_dir {run}/export"),
    "analytic variance into its checkpoint": (None, "analytic-variance {run} --output_dir {run}/analytic"),
    "evaluation into its data": (None, "evaluate {run} --dataset {data} --output_dir {data}"),
    "samples into their checkpoint": (None, "sample {run} --output_dir {run}"),
}


@pytest.mark.parametrize("command, argv", INPUTS_AND_OUTPUTS.values(), ids=INPUTS_AND_OUTPUTS)
def test_no_command_writes_where_it_reads(run, tmp_path, capsys, command, argv):
    """Refused when the options are read, before anything is loaded (so no other option is needed)."""
    if "{tmp}" in argv:  # a round folder of the distillation: `steps-64` of its default 64 → 1 steps
        run = run.rename(tmp_path / "steps-64")
    before = snapshot(tmp_path)
    line = refused(command, argv.format(run=run, data=tmp_path / "data", tmp=tmp_path).split(), capsys)
    assert "which it reads" in line and snapshot(tmp_path) == before


# 3. A resume continues the same run


@pytest.mark.parametrize(
    "change",
    [
        ["--prediction_type", "v_prediction"],
        ["--beta_schedule", "cosine"],
        ["--num_train_timesteps", "500"],
        ["--continuous_time", "vp"],
    ],
)
def test_a_resume_that_changes_what_defines_the_run_is_refused(run, capsys, change):
    before = snapshot(run)
    argv = ["--output_dir", run, *FAST, "--train_data_dir", run.parent / "data", "--resume_from_checkpoint", "latest"]
    line = refused(train_unconditional_command, [*argv, "--max_train_steps", "4", *change], capsys)
    assert change[0] in line and change[1] in line and "checkpoint-2" in line and snapshot(run) == before


def test_a_resume_on_other_data_is_refused(run, tmp_path, capsys):
    other = image_folder(tmp_path / "other", count=12)
    argv = ["--output_dir", run, *FAST, "--train_data_dir", other, "--resume_from_checkpoint", "latest"]
    assert "training data differs" in refused(train_unconditional_command, [*argv, "--max_train_steps", "4"], capsys)


def test_a_student_does_not_resume_from_a_teacher_whose_weights_changed(run, tmp_path, capsys):
    teacher = shutil.copytree(run, tmp_path / "teacher")
    argv = ["--teacher", teacher, "--output_dir", tmp_path / "student", *DISTIL, "--checkpointing_steps", "1"]
    assert distill_consistency_command([*map(str, argv), "--max_train_steps", "2"]) == 0  # checkpoint-1 kept
    weights = load_file(teacher / UNET_WEIGHTS)
    save_file({name: value + 0.01 for name, value in weights.items()}, teacher / UNET_WEIGHTS)
    resume = ["--max_train_steps", "3", "--resume_from_checkpoint", "latest"]
    assert "teacher's weights changed" in refused(distill_consistency_command, [*argv, *resume], capsys)


def test_a_relative_data_path_is_found_from_the_run_folder_wherever_a_command_starts(tmp_path, monkeypatch):
    image_folder(tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path / "work")
    record = TrainingConfig(output_dir="runs/a", train_data_dir="data").recorded()
    assert record["train_data_dir"] == os.path.join("..", "..", "data")
    (tmp_path / "work" / "runs" / "a").mkdir(parents=True)
    (tmp_path / "work" / "runs" / "a" / RUN_RECORD).write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)  # elsewhere: "data" here would be another folder, or none
    found = recorded_data("work/runs/a")["train_data_dir"]
    assert Path(found).resolve() == tmp_path / "work" / "data"


# 4. Records describe the weights they sit beside; every writer holds the run's lock


WRITERS = {
    "evaluate": "evaluate {run} --metrics bits_per_dim --num_timesteps 2 --max_images 2",
    "analytic variance in place": "analytic-variance {run} --in_place --num_images 2",
    "push": "push {run} --repo_id u/x --export_dir {export}",
}


@pytest.mark.parametrize("argv", WRITERS.values(), ids=WRITERS)
def test_no_command_writes_into_a_run_folder_another_process_holds(run, tmp_path, capsys, argv):
    before = snapshot(run)
    with run_lock(run):
        line = refused(None, argv.format(run=run, export=tmp_path / "export").split(), capsys)
    assert "is in use by another" in line and snapshot(run) == before and not (tmp_path / "export").exists()


def test_a_run_is_evaluated_on_the_data_it_records(run, capsys):
    argv = ["evaluate", str(run), "--metrics", "bits_per_dim", "--num_timesteps", "2", "--max_images", "2"]
    assert main([*argv, "--split", "train"]) == 0  # an image folder has one split
    output = capsys.readouterr().out
    data = json.loads((run / RUN_RECORD).read_text())["train_data_dir"]  # absolute, as it was given
    assert output.splitlines()[0].endswith(f"on {data}")  # not the built-in digits
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["dataset"] == data and "| bits/dim" in (run / "README.md").read_text()


# 5. What is published loads


def truncated(run: Path) -> None:
    (run / UNET_WEIGHTS).write_bytes((run / UNET_WEIGHTS).read_bytes()[:1000])


def nan_weights(run: Path) -> None:
    weights = load_file(run / UNET_WEIGHTS)
    save_file({name: torch.full_like(value, float("nan")) for name, value in weights.items()}, run / UNET_WEIGHTS)


def component_outside(run: Path) -> None:
    (run.parent / "secret").mkdir()
    (run.parent / "secret" / "config.json").write_text('{"password": 1}')
    index = json.loads((run / "model_index.json").read_text())
    (run / "model_index.json").write_text(json.dumps({**index, "../secret": ["diffusers", "UNet2DModel"]}))


def linked_component(run: Path) -> None:
    shutil.move(run / "scheduler", run.parent / "scheduler")
    (run / "scheduler").symlink_to(run.parent / "scheduler")


@pytest.mark.parametrize(
    "damage, words",
    [
        (truncated, "does not load"),
        (lambda run: (run / UNET_WEIGHTS).unlink(), "does not load"),
        (nan_weights, "non-finite weights"),
        (component_outside, "not a plain folder"),
        (linked_component, "not a plain folder"),
    ],
    ids=["truncated weights", "missing weights", "NaN weights", "component outside the folder", "linked component"],
)
def test_a_folder_that_would_not_load_is_not_exported(run, tmp_path, capsys, damage, words):
    damage(run)
    before = snapshot(tmp_path)
    line = refused(None, ["push", run, "--repo_id", "u/x", "--export_dir", tmp_path / "export"], capsys)
    assert words in line and snapshot(tmp_path) == before and not (tmp_path / "export").exists()


# 7. Every record is read through one reader


MALFORMED = {
    "training_args.json": ("seed", "zero"),
    "training_info.json": ("wall_time_seconds", None),
    "evaluation.json": ("metrics", [1]),
    "distillation.json": ("steps", "2"),
}
COMMANDS = {
    "export": (None, "push {run} --repo_id u/x --export_dir {out}"),
    "evaluate": (None, "evaluate {run} --metrics bits_per_dim --num_timesteps 2 --max_images 2 --output_dir {out}"),
    "distil": (distill_progressive_command, "--teacher {run} --output_dir {out} --teacher_steps 4"),
}
# Which records each command reads: the card all of them; a distillation its teacher's data only.
READS = [(command, name) for command in ("export", "evaluate") for name in MALFORMED] + [("distil", RUN_RECORD)]


@pytest.mark.parametrize("command, name", READS, ids=[f"{command} {name}" for command, name in READS])
def test_a_malformed_record_is_one_line_naming_it_before_any_output(run, tmp_path, capsys, command, name):
    key, value = MALFORMED[name]
    (run / name).write_text(json.dumps({**read_record(run / name), key: value}))
    command, argv = COMMANDS[command]
    line = refused(command, argv.format(run=run, out=tmp_path / "out").split(), capsys)
    assert f"{name}: key" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", SHAPES)
def test_a_record_of_the_wrong_json_kind_is_refused_by_the_reader(tmp_path, name):
    (tmp_path / name).write_text("[]")
    with pytest.raises(RecordError, match=f"{name}: it is \\[\\], not an object"):
        read_record(tmp_path / name)


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"checkpoint": "c", "dataset": "d", "details": {}}, "key 'metrics' is missing"),
        ({"checkpoint": "c", "dataset": "d", "metrics": {"fid": "low"}, "details": {}}, "'metrics.fid' is \"low\""),
        (
            {"checkpoint": "c", "dataset": "d", "metrics": {}, "details": {"samples": {"num_samples": 2}}},
            "'details.sa",
        ),
        ({"checkpoint": "c", "dataset": "d", "metrics": {}, "details": {"samples": None}}, None),  # optional: absent
    ],
    ids=["required object missing", "string for a number", "nested key missing", "optional object null"],
)
def test_the_reader_names_the_key_at_any_depth(tmp_path, record, problem):
    (tmp_path / "evaluation.json").write_text(json.dumps(record))
    if problem is None:
        assert read_record(tmp_path / "evaluation.json") == record
    else:
        with pytest.raises(RecordError, match=problem):
            read_record(tmp_path / "evaluation.json")


# 8. Long work starts only when it can finish


def test_training_refuses_before_it_starts_what_it_could_not_finish(tmp_path, capsys):
    argv = ["--output_dir", tmp_path / "a", *FAST, "--num_train_timesteps", "2"]
    assert "--num_inference_steps 3 exceeds T" in refused(train_unconditional_command, argv, capsys)
    argv = ["--output_dir", tmp_path / "b", *FAST, "--eval_every", "1", "--eval_metrics", "fid"]
    assert "Inception weights" in refused(train_unconditional_command, argv, capsys)
    assert not (tmp_path / "b" / "checkpoints").exists()
    argv = ["--output_dir", tmp_path / "c", *FAST, "--resolution", "1000000"]
    assert "GiB of memory" in refused(train_unconditional_command, argv, capsys)


@pytest.mark.parametrize(
    "argv, words",
    [
        ("visualize forward --scale 1000000 --output {out}/v.png", "--scale 1000000"),
        ("sample {run} --num_images 100000000000 --output {out}/s.png", "100000000000 samples"),
    ],
    ids=["visualize scale", "sample count"],
)
def test_sizes_that_cannot_fit_in_memory_are_refused_before_allocation(run, tmp_path, capsys, argv, words):
    line = refused(None, argv.format(run=run, out=tmp_path).split(), capsys)
    assert words in line and "GiB of memory" in line


def test_a_full_disk_at_the_final_save_is_one_line_and_leaves_nothing_half_written(run, monkeypatch):
    from safetensors import SafetensorError

    from hfddpm import HFDDPMPipeline

    pipeline = HFDDPMPipeline.from_pretrained(run)
    before = snapshot(run)

    def full_disk(self, folder, **options):
        Path(folder, "unet").mkdir(parents=True)
        Path(folder, "unet", "half.safetensors").write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: No space left on device })")

    monkeypatch.setattr(HFDDPMPipeline, "save_pretrained", full_disk)
    with pytest.raises(CheckpointError, match="no space left to save the pipeline") as error:
        save_pipeline(pipeline, run)
    assert "\n" not in str(error.value) and snapshot(run) == before and not (run / ".pipeline.partial").exists()


def test_a_push_that_fails_mid_run_is_a_warning_and_training_goes_on(tmp_path, monkeypatch, capsys):
    from hfddpm.hub import HubError
    from hfddpm.training import engine

    from .test_engine import make_trainer

    def failing_push(*args, **options):
        raise HubError("could not push to u/x: no network; the folder is kept")

    monkeypatch.setattr(engine, "push", failing_push)
    trainer = make_trainer(tmp_path / "run", save_model_steps=5, push_to_hub=True, hub_push_intermediate=True,
                           hub_token="hf_x", hub_model_id="u/x")  # fmt: skip
    trainer.push_intermediate(5)
    assert "warning: the push at step 5 failed: could not push" in capsys.readouterr().err
    assert trainer.intermediate_pushes == []


def test_memory_check_passes_what_fits():
    check_fits_in_memory(1 << 20, "a megabyte")  # no error: the refusal above is about size, not a rule
