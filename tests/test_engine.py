"""The training engine, reached directly: a new objective reuses its loop, checkpoints and resume; the
configuration checks its values; the old flag name still works."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hfddpm import DDIMScheduler, HFDDPMPipeline
from hfddpm.training import Trainer, TrainingConfig, parse_training_config
from hfddpm.training.guards import NonFiniteLossError
from hfddpm.training.setup import (
    LOCK_FILE,
    RUN_OUTPUTS,
    RUN_RECORD,
    check_output_dir,
    create_accelerator,
    create_training_unet,
    load_training_images,
    lock_file,
    output_dir_lock,
    remove_earlier_run_outputs,
)
from hfddpm.training.state import RunState
from hfddpm.training.tracking import read_jsonl_log

from .conftest import tiny_unet


class CallCount:
    """An objective's own state, which checkpoints must save and resume must restore."""

    def __init__(self):
        self.calls = 0

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]


class Output:
    def __init__(self, loss: torch.Tensor):
        self.loss = loss


class DenoiseAtOneLevel:
    """Not DDPM: recover x_0 from x_0 + 0.3 ε at a single timestep (a 10-line objective the engine must carry)."""

    def __init__(self):
        self.count = CallCount()

    def __call__(self, model, batch, randomness):
        self.count.calls += 1
        noise = torch.randn(batch.shape, generator=randomness.generator)
        prediction = model(batch + 0.3 * noise, torch.zeros(len(batch), dtype=torch.long)).sample
        return Output(((prediction - batch) ** 2).mean())

    def checkpoint_objects(self):
        return {"call_count": self.count}

    def observe(self, accelerator, output):
        pass

    def after_update(self, model):
        pass

    def logs(self, accelerator, output):
        return {"objective_calls": self.count.calls}

    def pipeline(self, unet):
        return HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=10))


def make_trainer(output_dir, objective=None, **options) -> Trainer:
    """A Trainer of `objective` (`DenoiseAtOneLevel` by default) for a 10-step run of the tiny UNet on the digits."""
    defaults = dict(
        model_preset="tiny",
        train_batch_size=16,
        max_train_steps=10,
        checkpointing_steps=4,
        save_images_steps=1000,
        num_sample_images=2,
        num_inference_steps=2,
        logging_steps=1,
        lr_warmup_steps=2,
        report_to="none",
    )
    config = TrainingConfig(output_dir=str(output_dir), **{**defaults, **options})
    accelerator = create_accelerator(config, check_output_dir(config))
    images = load_training_images(config, accelerator)
    unet = create_training_unet(config, images.preprocessing.channels)
    return Trainer(config, accelerator, objective or DenoiseAtOneLevel(), unet, images)


def train(output_dir, **options) -> DenoiseAtOneLevel:
    trainer = make_trainer(output_dir, **options)
    assert trainer.run() == 0
    return trainer.objective


@pytest.mark.slow
def test_a_new_objective_reuses_the_loop_checkpoints_and_resume(tmp_path):
    whole = train(tmp_path / "whole")
    assert whole.count.calls == 10
    log = read_jsonl_log(tmp_path / "whole" / "logs" / "train.jsonl")
    assert [log[step]["objective_calls"] for step in (1, 10)] == [1, 10]
    assert log[10]["loss"] < log[1]["loss"]  # it learns
    assert json.loads((tmp_path / "whole" / "checkpoints" / "checkpoint-8" / "call_count.json").read_text()) == {
        "calls": 8
    }
    pipe = HFDDPMPipeline.from_pretrained(tmp_path / "whole")
    assert pipe.unet.config.sample_size == 8 and type(pipe.scheduler) is DDIMScheduler

    # Resume the same run from its step-4 checkpoint: the objective's count and every weight continue exactly.
    resumed_dir = tmp_path / "resumed"
    checkpoint = tmp_path / "whole" / "checkpoints" / "checkpoint-4"
    resumed = train(resumed_dir, resume_from_checkpoint=str(checkpoint))
    assert resumed.count.calls == 10  # 4 restored + 6
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "whole" / weights), load_file(resumed_dir / weights)
    assert all(torch.equal(a[name], b[name]) for name in a)
    # A resumed run's training time is the segments' total: the time its checkpoint records (here set to 100
    # minutes) plus the segment after it, in training_info.json and the model card.
    long_run = tmp_path / "long"
    shutil.copytree(checkpoint, long_run / "checkpoints" / "checkpoint-4")
    shutil.copy(tmp_path / "whole" / "training_args.json", long_run)
    state = long_run / "checkpoints" / "checkpoint-4" / "training_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "wall_time_seconds": 6000.0}))
    started = time.perf_counter()
    train(long_run, resume_from_checkpoint="latest")
    total = json.loads((long_run / "training_info.json").read_text())["wall_time_seconds"]
    assert 6000.0 < total <= 6000.0 + time.perf_counter() - started
    assert f"| training time | {total / 60:.1f} min |" in (long_run / "README.md").read_text()


def test_the_engine_refuses_an_accelerator_that_contradicts_the_config_and_a_dataset_without_epochs():
    config = TrainingConfig(gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="the Accelerator accumulates 1 batches, the config 2"):
        Trainer(config, SimpleNamespace(gradient_accumulation_steps=1), DenoiseAtOneLevel(), None, None)
    with pytest.raises(TypeError, match="images must be a dataset with set_epoch"):
        Trainer(TrainingConfig(), SimpleNamespace(gradient_accumulation_steps=1), DenoiseAtOneLevel(), None, [1, 2])


def test_an_objective_cannot_take_the_names_of_the_engines_checkpointed_state(tmp_path):
    class Clashing(DenoiseAtOneLevel):
        def checkpoint_objects(self):
            return {"ema": self.count}

    config = TrainingConfig(output_dir=str(tmp_path / "run"), model_preset="tiny", report_to="none")
    accelerator = create_accelerator(config, tmp_path / "run")
    images = load_training_images(config, accelerator)
    with pytest.raises(ValueError, match=r"use the engine's names \['ema'\]; rename them"):
        Trainer(config, accelerator, Clashing(), create_training_unet(config, 1), images)


class InfiniteGradientAt(DenoiseAtOneLevel):
    """Finite losses, but at call `at` a backward hook makes the gradient infinite, as an overflow inside the network
    would."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def __call__(self, model, batch, randomness):
        output = super().__call__(model, batch, randomness)
        if self.count.calls == self.at:
            output.loss.register_hook(lambda grad: grad * float("inf"))
        return output


def all_finite(folder: Path) -> bool:
    return all(
        torch.isfinite(tensor).all() for file in folder.glob("*.safetensors") for tensor in load_file(file).values()
    )


@pytest.mark.slow
def test_an_infinite_gradient_stops_the_run_before_the_update_or_is_skipped(tmp_path):
    with pytest.raises(NonFiniteLossError) as error:
        make_trainer(tmp_path / "stop", InfiniteGradientAt(3), checkpointing_steps=2).run()
    assert re.fullmatch(
        r"step 3: the gradient norm is (nan|inf); the run stopped without updating the weights, and checkpoint-2 is "
        r"its last checkpoint: lower --learning_rate or --max_grad_norm, or pass --on_nonfinite_loss skip, then "
        r"resume with --resume_from_checkpoint latest",
        str(error.value),
    )
    assert [p.name for p in (tmp_path / "stop" / "checkpoints").iterdir()] == ["checkpoint-2"]
    assert all_finite(tmp_path / "stop" / "checkpoints" / "checkpoint-2")

    skipping = make_trainer(tmp_path / "skip", InfiniteGradientAt(3), checkpointing_steps=2, on_nonfinite_loss="skip")
    assert skipping.run() == 0
    assert json.loads((tmp_path / "skip" / "training_info.json").read_text())["nonfinite_steps"] == 1
    assert all_finite(tmp_path / "skip" / "unet") and all_finite(tmp_path / "skip" / "checkpoints" / "checkpoint-8")


def poison_update_at(trainer: Trainer, step: int) -> Trainer:
    """Make optimizer step `step` leave one weight NaN, as an update that overflows does."""
    original = trainer.optimizer.step

    def update(*args, **kwargs):
        result = original(*args, **kwargs)
        if trainer.state.global_step + 1 == step:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")
        return result

    trainer.optimizer.step = update
    return trainer


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("mode", ["stop", "skip"])
@pytest.mark.parametrize(
    "cause, options, step, kept",
    [
        ("an update that overflows", {}, 3, "checkpoint-2 is its last checkpoint"),
        (
            "a learning rate float32 cannot hold",
            {"learning_rate": 1e39, "lr_warmup_steps": 0, "lr_scheduler": "constant"},
            1,
            "it has no checkpoint yet",
        ),
    ],
)
def test_an_update_that_makes_the_weights_non_finite_stops_the_run_before_any_save(
    tmp_path, mode, cause, options, step, kept
):
    run = tmp_path / "run"
    trainer = make_trainer(run, checkpointing_steps=1, save_model_steps=1, on_nonfinite_loss=mode, **options)
    if not options:
        poison_update_at(trainer, step)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.run()
    assert str(error.value) == (
        f"step {step}: the update made the weights non-finite; the run stopped before saving them, and {kept}: "
        "lower --learning_rate, then resume with --resume_from_checkpoint latest"
    )
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{s}" for s in range(1, step)][-3:]
    assert all(all_finite(run / "checkpoints" / name) for name in checkpoints)
    assert all_finite(run / "unet") if step > 1 else not (run / "unet").exists()


MAIN_PROCESS = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)


def earlier_run(folder: Path) -> Path:
    """A folder as a run leaves it: its record first, then every run output."""
    for part in RUN_OUTPUTS:
        (folder / part).mkdir(parents=True) if "." not in part else (folder / part).write_text("{}")
    (folder / RUN_RECORD).write_text(json.dumps(TrainingConfig(output_dir=str(folder)).recorded()))
    return folder


def test_overwriting_removes_what_an_earlier_run_wrote_and_nothing_else(tmp_path):
    run = earlier_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "my-images").mkdir()
    (run / LOCK_FILE).touch()
    config = TrainingConfig(output_dir=str(run), overwrite_output_dir=True)
    remove_earlier_run_outputs(config, MAIN_PROCESS, check_output_dir(config))
    assert sorted(path.name for path in run.iterdir()) == [LOCK_FILE, "my-images", "notes.txt"]


def user_folder_with_readme(folder: Path) -> str:
    folder.mkdir()
    (folder / "README.md").write_text("my notes")
    return "README.md"


def saved_pipeline(folder: Path) -> str:
    HFDDPMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler()).save_pretrained(folder)
    return "unet, scheduler, model_index.json"


def folder_with_run_like_names(folder: Path) -> str:
    for name in ("samples", "logs", "checkpoints"):
        (folder / name).mkdir(parents=True)
        (folder / name / "mine.txt").write_text(name)
    return "checkpoints, samples, logs"


def record_that_is_no_runs(folder: Path) -> str:
    folder.mkdir()
    (folder / RUN_RECORD).write_text("my own notes, not JSON")
    (folder / "evaluation.json").write_text('{"mine": 1}')
    return "training_args.json, evaluation.json"


@pytest.mark.parametrize(
    "make", [user_folder_with_readme, saved_pipeline, folder_with_run_like_names, record_that_is_no_runs]
)
@pytest.mark.parametrize("options", [{}, {"overwrite_output_dir": True}, {"resume_from_checkpoint": "latest"}])
def test_a_folder_no_run_wrote_is_refused_and_loses_nothing(tmp_path, make, options):
    folder = tmp_path / "mine"
    names = make(folder)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    config = TrainingConfig(output_dir=str(folder), **options)
    with pytest.raises(ValueError) as error:
        check_output_dir(config)
    assert str(error.value) == (
        f"--output_dir {folder} holds {names}, which a run would replace, but no training run wrote it (no "
        "training_args.json); choose a new or empty --output_dir"
    )
    remove_earlier_run_outputs(config, MAIN_PROCESS, folder)  # were it reached anyway
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_a_parent_folder_of_runs_is_no_run_and_overwriting_it_deletes_nothing(tmp_path):
    runs = [earlier_run(tmp_path / "runs" / name) for name in ("a", "b")]
    config = TrainingConfig(output_dir=str(tmp_path / "runs"), overwrite_output_dir=True)
    remove_earlier_run_outputs(config, MAIN_PROCESS, check_output_dir(config))
    assert all(sorted(path.name for path in run.iterdir()) == sorted(RUN_OUTPUTS) for run in runs)


def test_output_folders_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    for folder, message in [
        (tmp_path / "file", f"--output_dir {tmp_path / 'file'} is a file; choose a folder"),
        (
            tmp_path / "file" / "run",
            f"--output_dir {tmp_path / 'file' / 'run'} cannot be created: {tmp_path / 'file'} is a file; choose a "
            "folder",
        ),
    ]:
        with pytest.raises(NotADirectoryError) as error:
            check_output_dir(TrainingConfig(output_dir=str(folder)))
        assert str(error.value) == message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder, whatever its mode")
@pytest.mark.parametrize("where", ["run", "run/deeper"])
def test_an_output_folder_under_a_read_only_folder_is_refused(tmp_path, where):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError) as error:
            check_output_dir(TrainingConfig(output_dir=str(locked / where)))
        assert str(error.value) == (
            f"--output_dir {locked / where} cannot be created: {locked} is not writable; choose a folder you can "
            "write to"
        )
    finally:
        locked.chmod(0o700)


def test_a_second_run_into_a_locked_output_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    with output_dir_lock(run):
        assert (run / LOCK_FILE).read_text() == str(os.getpid())
        with pytest.raises(ValueError) as error, output_dir_lock(run):
            pass
        assert str(error.value) == (
            f"--output_dir {run} is in use by another training run (process {os.getpid()}); wait for it to end, or "
            "choose another --output_dir"
        )
        (run / RUN_RECORD).write_text("{}")  # the run writes
    with output_dir_lock(run):  # released when the run ends
        pass
    assert sorted(path.name for path in run.iterdir()) == [LOCK_FILE, RUN_RECORD]
    # Folders the lock created, left holding only the lock (the run was refused before writing), are removed.
    with pytest.raises(ValueError, match="a bad image"), output_dir_lock(tmp_path / "new" / "refused"):
        raise ValueError("a bad image")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_a_lock_taken_on_a_lock_file_removed_meanwhile_is_taken_again_on_the_new_one(tmp_path):
    """A refused run removes the lock file it created; a run that opened that file just before must not keep a
    lock on the removed file (a third run would then lock a new file too)."""
    import fcntl

    locked = []

    class RemovedAfterOpening:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        def flock(self, descriptor, operation):
            fcntl.flock(descriptor, operation)
            if not locked:
                (tmp_path / LOCK_FILE).unlink()  # the refused run's clean-up, between our open and our lock
            locked.append(os.fstat(descriptor).st_ino)

    descriptor = lock_file(RemovedAfterOpening(), tmp_path)
    try:
        assert len(locked) == 2 and locked[1] == os.stat(tmp_path / LOCK_FILE).st_ino == os.fstat(descriptor).st_ino
    finally:
        os.close(descriptor)


LOCK_AND_SLEEP = """
import sys, time
from pathlib import Path
from hfddpm.training.setup import output_dir_lock
with output_dir_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_AND_SLEEP, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(ValueError, match=rf"is in use by another training run \(process {holder.pid}\)"):
            with output_dir_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_dir_lock(run):  # SIGKILL released it
        assert (run / LOCK_FILE).read_text() == str(os.getpid())


def test_the_run_state_records_its_position_counters_and_time_and_reads_them_back():
    state = RunState(global_step=7, epoch=2, batches_in_epoch=24, skipped_steps=1, nonfinite_steps=2)
    record = state.record(batches_per_epoch=24, wall_time_seconds=41.26)
    # An epoch read to its end is recorded as the start of the next one.
    assert record == {
        "global_step": 7,
        "epoch": 3,
        "batches_in_epoch": 0,
        "skipped_steps": 1,
        "nonfinite_steps": 2,
        "wall_time_seconds": 41.3,
    }
    assert RunState.from_record({**record, "hfddpm_version": "0.1.0"}) == RunState(7, 3, 0, 1, 2, 41.3)
    assert state.record(batches_per_epoch=47, wall_time_seconds=0.0)["epoch"] == 2  # mid-epoch stays
    assert RunState.from_record({"global_step": 5, "epoch": 1, "batches_in_epoch": 3}) == RunState(5, 1, 3)  # older


@pytest.mark.parametrize(
    "options, message",
    [
        ({"learning_rate": float("nan")}, "--learning_rate must be a finite number in (0, inf), got nan"),
        ({"max_grad_norm": float("inf")}, "--max_grad_norm must be a finite number in (0, inf), got inf"),
        ({"max_grad_norm": 0.0}, "--max_grad_norm must be a finite number in (0, inf), got 0.0"),
        ({"adam_beta1": 1.0}, "--adam_beta1 must be a finite number in [0, 1), got 1.0"),
        ({"adam_epsilon": -1e-8}, "--adam_epsilon must be a finite number in (0, inf), got -1e-08"),
        ({"ema_max_decay": float("nan")}, "--ema_max_decay must be a finite number in [0, 1], got nan"),
        ({"vlb_weight": -1.0}, "--vlb_weight must be a finite number in [0, inf), got -1.0"),
        ({"snr_gamma": float("nan")}, "--snr_gamma must be a finite number in (0, inf), got nan"),
        ({"snr_gamma": 0.0}, "--snr_gamma must be a finite number in (0, inf), got 0.0"),
        ({"preprocessing_num_workers": 0}, "--preprocessing_num_workers must be at least 1, got 0"),
        ({"seed": 2**32}, "--seed must be in [0, 4294967295], got 4294967296"),
        ({"train_batch_size": 0}, "--train_batch_size must be at least 1, got 0"),
        ({"dataloader_num_workers": -1}, "--dataloader_num_workers must be at least 0, got -1"),
    ],
)
def test_the_configuration_refuses_out_of_range_values(options, message):
    with pytest.raises(ValueError) as error:
        TrainingConfig(**options)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "options, message",
    [
        ({"train_batch_size": "64"}, "--train_batch_size must be an integer, got '64' (str)"),
        ({"train_batch_size": True}, "--train_batch_size must be an integer, got True (bool)"),
        ({"learning_rate": None}, "--learning_rate must be a number, got None (NoneType)"),
        ({"channels": 3.0}, "--channels must be an integer or None, got 3.0 (float)"),
        ({"use_ema": "yes"}, "--use_ema must be True or False, got 'yes' (str)"),
        ({"eval_metrics": "fid"}, "--eval_metrics must be a list of strings or None, got 'fid' (str)"),
    ],
)
def test_the_configuration_refuses_values_of_the_wrong_type(options, message):
    with pytest.raises(TypeError) as error:
        TrainingConfig(**options)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "options, message",
    [
        ({"on_nonfinite_loss": "ignore"}, "--on_nonfinite_loss must be one of ['stop', 'skip'], got 'ignore'"),
        ({"report_to": "wandb"}, "--report_to must be one of ['tensorboard', 'none'], got 'wandb'"),
        ({"inference_scheduler": "euler"}, "--inference_scheduler must be one of ['ddpm', 'ddim'], got 'euler'"),
        ({"channels": 2}, "--channels must be one of [1, 3], got 2"),
        ({"reverse_variance": "analytic"}, "--reverse_variance must be one of"),
        ({"eval_metrics": ["fid", "is"]}, "--eval_metrics must be among"),
    ],
)
def test_the_configuration_refuses_unknown_choices(options, message):
    with pytest.raises(ValueError) as error:
        TrainingConfig(**options)
    assert str(error.value).startswith(message)


def test_numpy_numbers_and_paths_become_plain_values_the_run_can_record():
    config = TrainingConfig(train_batch_size=np.int64(16), learning_rate=np.float32(0.5), output_dir=Path("out"))
    assert (config.train_batch_size, config.learning_rate, config.output_dir) == (16, 0.5, "out")
    assert [type(config.train_batch_size), type(config.learning_rate)] == [int, float]
    json.dumps(config.recorded())  # training_args.json


def test_the_configuration_fills_its_defaults_and_records_no_token():
    config = TrainingConfig(hub_token="hf_secret")
    assert config.max_train_steps == 2000 and config.num_epochs is None
    assert "hub_token" not in config.recorded() and "hf_secret" not in json.dumps(config.recorded())
    assert TrainingConfig(num_epochs=3).max_train_steps is None  # epochs alone decide the length
    assert TrainingConfig(eval_every=5).eval_metrics == ["fd_digits", "digits_scores"]


def test_the_command_line_sets_only_what_it_is_given():
    config = parse_training_config(["--learning_rate", "1e-4", "--no-use_ema", "--eval_metrics", "fid", "fd_dinov2"])
    assert config == TrainingConfig(learning_rate=1e-4, use_ema=False, eval_metrics=["fid", "fd_dinov2"])


def test_the_old_variance_flag_still_works_and_says_its_new_name(capsys):
    config = parse_training_config(["--variance_type", "learned_range"])
    assert config.reverse_variance == "learned_range"
    assert capsys.readouterr().err.strip() == "warning: --variance_type is deprecated; use --reverse_variance"
    assert parse_training_config(["--reverse_variance", "fixed_large"]).reverse_variance == "fixed_large"
