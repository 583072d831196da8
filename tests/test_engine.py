"""The training engine, reached directly: a new objective reuses its loop, checkpoints and resume; non-finite steps
and updates never reach a checkpoint; the output folder is owned, locked and overwritten only where a run wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from hfddpm import DDIMScheduler, HFDDPMPipeline
from hfddpm.run_folder import LOCK_FILE, RUN_RECORD, _take_lock, run_lock
from hfddpm.training import LossOutput, Trainer, TrainingConfig
from hfddpm.training.faults import NonFiniteLossError
from hfddpm.training.output_folder import RUN_OUTPUTS, check_output_dir, replace_earlier_runs
from hfddpm.training.setup import create_accelerator, create_training_unet, load_training_images
from hfddpm.training.tracking import read_jsonl_log

from .conftest import tiny_unet


class DenoiseAtOneLevel:
    """Not DDPM: recover x_0 from x_0 + 0.3 ε at a single timestep (a 10-line objective the engine must carry), with
    a state of its own that checkpoints must save and resume restore."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, batch, generator):
        self.calls += 1
        noise = torch.randn(batch.shape, generator=generator)
        prediction = model(batch + 0.3 * noise, torch.zeros(len(batch), dtype=torch.long)).sample
        error = ((prediction - batch) ** 2).flatten(1).mean(1)
        return LossOutput(error.mean(), error.detach(), torch.zeros(len(batch)), {"calls": torch.tensor(self.calls)})

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]

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
    assert whole.calls == 10
    log = read_jsonl_log(tmp_path / "whole" / "logs" / "train.jsonl")
    assert [log[step]["calls"] for step in (1, 10)] == [1, 10]  # the objective's logs
    assert log[10]["loss"] < log[1]["loss"]  # it learns
    assert json.loads((tmp_path / "whole" / "checkpoints" / "checkpoint-8" / "objective.json").read_text()) == {
        "calls": 8
    }
    pipe = HFDDPMPipeline.from_pretrained(tmp_path / "whole")
    assert pipe.unet.config.sample_size == 8 and type(pipe.scheduler) is DDIMScheduler

    # Resume the same run from its step-4 checkpoint: the objective's count and every weight continue exactly.
    resumed_dir = tmp_path / "resumed"
    checkpoint = tmp_path / "whole" / "checkpoints" / "checkpoint-4"
    resumed = train(resumed_dir, resume_from_checkpoint=str(checkpoint))
    assert resumed.calls == 10  # 4 restored + 6
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
    # A run stopped after a checkpoint and finished at that step (--max_train_steps of the checkpoint): no step more,
    # and the pipeline and its card are written (no loss was logged in this segment).
    ended = tmp_path / "ended"
    shutil.copytree(checkpoint, ended / "checkpoints" / "checkpoint-4")
    shutil.copy(tmp_path / "whole" / "training_args.json", ended)
    assert train(ended, resume_from_checkpoint="latest", max_train_steps=4).calls == 4
    assert json.loads((ended / "training_info.json").read_text())["global_step"] == 4
    assert "final loss" not in (ended / "README.md").read_text() and (ended / "model_index.json").is_file()


class InfiniteGradientAt(DenoiseAtOneLevel):
    """Finite losses, but at call `at` a backward hook makes the gradient infinite, as an overflow inside the network
    would."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def __call__(self, model, batch, generator):
        output = super().__call__(model, batch, generator)
        if self.calls == self.at:
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
    assert re.match(
        r"step 3: the gradient norm is (nan|inf); the run stopped without updating the weights", str(error.value)
    )
    assert "checkpoint-2 is its last checkpoint" in str(error.value) and "--on_nonfinite_loss skip" in str(error.value)
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
    assert str(error.value).startswith(f"step {step}: the update made the weights non-finite")
    assert kept in str(error.value) and "lower --learning_rate" in str(error.value)
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
    replace_earlier_runs(config, MAIN_PROCESS, [check_output_dir(config)])
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
    return "evaluation.json, training_args.json"


@pytest.mark.parametrize(
    "make", [user_folder_with_readme, saved_pipeline, folder_with_run_like_names, record_that_is_no_runs]
)
@pytest.mark.parametrize("options", [{}, {"overwrite_output_dir": True}, {"resume_from_checkpoint": "latest"}])
def test_a_folder_no_run_wrote_is_refused_and_loses_nothing(tmp_path, make, options):
    folder = tmp_path / "mine"
    names = make(folder)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    config = TrainingConfig(output_dir=str(folder), **options)
    with pytest.raises(ValueError, match=f"holds {names}, which a run would replace, but no training run wrote it"):
        check_output_dir(config)
    replace_earlier_runs(config, MAIN_PROCESS, [folder])  # were it reached anyway
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_a_parent_folder_of_runs_is_no_run_and_overwriting_it_deletes_nothing(tmp_path):
    runs = [earlier_run(tmp_path / "runs" / name) for name in ("a", "b")]
    config = TrainingConfig(output_dir=str(tmp_path / "runs"), overwrite_output_dir=True)
    replace_earlier_runs(config, MAIN_PROCESS, [check_output_dir(config)])
    assert all(sorted(path.name for path in run.iterdir()) == sorted(RUN_OUTPUTS) for run in runs)


def test_output_folders_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file; name a folder"):
        check_output_dir(TrainingConfig(output_dir=str(tmp_path / "file")))
    with pytest.raises(ValueError, match=f"lies under {tmp_path / 'file'}, which is a file"):
        check_output_dir(TrainingConfig(output_dir=str(tmp_path / "file" / "run")))
    if os.geteuid() != 0:  # root may write into any folder, whatever its mode
        (tmp_path / "locked").mkdir(mode=0o500)
        with pytest.raises(ValueError, match="is not writable; choose a folder you can write to"):
            check_output_dir(TrainingConfig(output_dir=str(tmp_path / "locked" / "run" / "deeper")))


def test_a_second_run_into_a_locked_output_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        assert (run / LOCK_FILE).read_text() == str(os.getpid())
        with pytest.raises(
            ValueError, match=rf"in use by another training run or hfddpm command \(process {os.getpid()}\)"
        ):
            with run_lock(run):
                pass
        (run / RUN_RECORD).write_text("{}")  # the run writes
    with run_lock(run):  # released when the run ends
        pass
    assert sorted(path.name for path in run.iterdir()) == [LOCK_FILE, RUN_RECORD]
    # Folders the lock created, left holding only the lock (the run was refused before writing), are removed.
    with pytest.raises(ValueError, match="a bad image"), run_lock(tmp_path / "new" / "refused"):
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

    descriptor = _take_lock(RemovedAfterOpening(), tmp_path, "--output_dir")
    try:
        assert len(locked) == 2 and locked[1] == os.stat(tmp_path / LOCK_FILE).st_ino == os.fstat(descriptor).st_ino
    finally:
        os.close(descriptor)


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    run, (ready, told) = tmp_path / "run", os.pipe()
    holder = os.fork()
    if holder == 0:  # the child: takes the lock, says so, and waits to be killed
        with run_lock(run):
            os.write(told, b"locked")
            time.sleep(600)
        os._exit(0)
    try:
        assert os.read(ready, 6) == b"locked"
        with pytest.raises(ValueError, match=rf"in use by another .* \(process {holder}\)"):
            with run_lock(run):
                pass
    finally:
        os.kill(holder, 9)
        os.waitpid(holder, 0)
    with run_lock(run):  # SIGKILL released it
        assert (run / LOCK_FILE).read_text() == str(os.getpid())
