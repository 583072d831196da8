"""Faults a training run survives — SIGKILL anywhere, SIGTERM/SIGINT, a full disk, NaN losses — and flat memory.

The runs are real processes forked by tests/training_runner.py; faults at exact places (inside a checkpoint save,
half-way through deleting a checkpoint) are injected there, others are signals sent from here at random moments.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import accelerate.utils
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from hfddpm import DDIMScheduler, HFDDPMPipeline, create_unet
from hfddpm.training.faults import (
    CheckpointError,
    RunInterrupted,
    StepCheck,
    StopRequest,
    check_step,
    run_command,
    weights_are_finite,
)
from hfddpm.training.tracking import read_jsonl_log

from .test_train_script import FAST, weights
from .training_runner import memory_kb, train_unconditional_command


def run_args(output_dir: Path, *args) -> list[str]:
    return ["--output_dir", str(output_dir), *FAST, *args]


def log_size(run: Path) -> int:
    log = run / "logs" / "train.jsonl"
    return log.stat().st_size if log.is_file() else 0


def last_logged_step(run: Path, since: int = 0) -> int:
    """The step of the newest line of the run's log written after its first `since` bytes (0 if none): a resumed
    run appends to the log of the segments before it."""
    log = run / "logs" / "train.jsonl"
    lines = log.read_bytes()[since:].decode().splitlines() if log.is_file() else []
    steps = [json.loads(line).get("step") or 0 for line in lines if line.endswith("}")]
    return steps[-1] if steps else 0


def wait_until(condition, pid: int, console: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise AssertionError(f"the run ended early:\n{console.read_text()[-2000:]}") from None
        assert time.time() < deadline, f"timed out:\n{console.read_text()[-2000:]}"
        time.sleep(0.02)


def assert_everything_readable(run: Path) -> None:
    """Every visible checkpoint is complete and each of its files loads; so do the pipeline, grids and arguments."""
    for checkpoint in (run / "checkpoints").glob("checkpoint-*"):
        assert (checkpoint / "training_state.json").is_file(), f"{checkpoint.name} is incomplete"
        for file in checkpoint.iterdir():
            if file.suffix == ".safetensors":
                load_file(file)
            elif file.suffix == ".json":
                json.loads(file.read_text())
            else:  # Accelerate's optimizer and RNG states, loaded as it loads them (weights_only)
                accelerate.utils.load(file)
    if (run / "model_index.json").is_file():
        HFDDPMPipeline.from_pretrained(run)
    for grid in (run / "samples").glob("*.png"):
        PIL.Image.open(grid).verify()
    if (run / "training_args.json").is_file():
        json.loads((run / "training_args.json").read_text())


# The 297 test digits in batches of 8 and gradient accumulation 2: 37 batches, so 18.5 optimizer steps, per epoch,
# and 72 steps cross three epoch boundaries, one of them inside a step; checkpoints every 4 steps with at most 2
# kept, so old ones are deleted; a sample grid every 20 steps and the pipeline every 24.
CHAIN = ["--split", "test", "--train_batch_size", "8", "--gradient_accumulation_steps", "2", "--max_train_steps", "72"]
CHAIN += ["--checkpointing_steps", "4", "--checkpoints_total_limit", "2", "--save_images_steps", "20"]
CHAIN += ["--save_model_steps", "24"]


@pytest.mark.slow
def test_a_run_killed_anywhere_resumes_from_its_last_complete_checkpoint_exactly(tmp_path, training_runner):
    runner, run, console = training_runner, tmp_path / "run", tmp_path / "console.txt"
    runner.start(run_args(tmp_path / "whole", *CHAIN), tmp_path / "whole.txt")
    assert runner.wait() == 0
    argv = run_args(run, *CHAIN, "--resume_from_checkpoint", "latest")
    checkpoints = run / "checkpoints"

    def killed(faults: dict) -> None:
        runner.start(argv, console, faults)
        assert runner.wait() == -signal.SIGKILL
        assert_everything_readable(run)

    # 1–3: inside the first checkpoint save. Nothing is complete, so each resume starts afresh.
    killed({"kill_after": {"hfddpm.training.checkpoints:save_state_dict": 1}})
    assert (checkpoints / ".checkpoint-4.partial" / "model.safetensors").is_file()
    killed({"kill_before": {"hfddpm.training.checkpoints:write_text": 1}})
    killed({"kill_after": {"hfddpm.training.checkpoints:write_text": 1}})
    assert (checkpoints / ".checkpoint-4.partial" / "training_state.json").is_file()
    assert not (checkpoints / "checkpoint-4").exists()
    # 4: half-way through deleting checkpoint-4 (the third save, checkpoint-12, exceeds the limit of 2).
    killed({"kill_inside_rmtree": ["checkpoint-", 1]})
    assert (checkpoints / ".checkpoint-4.removing").is_dir()
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    # 5: inside the first pipeline save (step 24), its files staged but not yet moved into place.
    killed({"kill_after": {"hfddpm.durable:finish_tree": 1}})
    assert (run / ".pipeline.partial" / "model_index.json").is_file() and not (run / "model_index.json").exists()

    # SIGTERM and SIGINT during training, then 6–9: SIGKILL at random moments of training. Each signal is sent
    # once the resumed run has logged a step of its own, then 0 to 3 more (a step of the run, not a moment: the
    # run is then 12 or more steps from its end and cannot finish first, however loaded the machine), then
    # anywhere within the next step.
    rng = random.Random(0)
    for signum in (signal.SIGTERM, signal.SIGINT, *[signal.SIGKILL] * 4):
        since = log_size(run)
        pid = runner.start(argv, console)
        wait_until(lambda since=since: last_logged_step(run, since) > 0, pid, console)
        target = last_logged_step(run, since) + rng.randint(0, 3)
        assert target <= 60, "the signals came too late in the run to be sure it is still running"
        wait_until(lambda since=since, target=target: last_logged_step(run, since) >= target, pid, console)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signum)
        assert runner.wait() == (-signum if signum == signal.SIGKILL else 128 + signum)
        if signum != signal.SIGKILL:  # a checkpoint at the step reached, exit status 128 + signal
            step = int(re.findall(r"stopped at step (\d+) and saved checkpoint-\1", console.read_text())[-1])
            assert (checkpoints / f"checkpoint-{step}" / "training_state.json").is_file()
        assert_everything_readable(run)

    runner.start(argv, console)
    assert runner.wait() == 0
    assert "Traceback" not in console.read_text()
    whole, resumed = weights(tmp_path / "whole"), weights(run)
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)  # bit for bit on CPU
    log_whole = read_jsonl_log(tmp_path / "whole" / "logs" / "train.jsonl")
    log_resumed = read_jsonl_log(run / "logs" / "train.jsonl")
    assert [log_resumed[s]["loss"] for s in range(1, 73)] == [log_whole[s]["loss"] for s in range(1, 73)]
    assert log_whole[72]["lr"] == pytest.approx(0.0, abs=1e-9) and log_whole[36]["lr"] > 1e-3


def error_lines(console: Path) -> list[str]:
    text = console.read_text()
    assert "Traceback" not in text
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, training_runner):
    # After checkpoint-3, no file may grow past 64 KiB (the kernel's file-size limit: writes fail with EFBIG, as
    # they fail with ENOSPC on a full disk); checkpoint-6's 4 MB of weights cannot be written.
    run, console = tmp_path / "run", tmp_path / "console.txt"
    args = run_args(run, "--max_train_steps", "9", "--checkpointing_steps", "3")
    faults = {"file_size_limit_after": ["hfddpm.training.checkpoints:CheckpointManager.save", 1, 65536]}
    training_runner.start(args, console, faults)
    assert training_runner.wait() == 1
    [error] = error_lines(console)
    assert error.startswith(f"error: no space left to write {run / 'checkpoints' / 'checkpoint-6'} (")
    assert "; checkpoint-3 is kept: free disk space" in error
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-3"]  # no partial folder left
    assert_everything_readable(run)

    training_runner.start([*args, "--resume_from_checkpoint", "latest"], console)
    assert training_runner.wait() == 0
    assert f"Resuming from {run / 'checkpoints' / 'checkpoint-3'} at step 3" in console.read_text()


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_at_its_step_without_touching_the_weights(tmp_path, training_runner):
    run, console = tmp_path / "run", tmp_path / "console.txt"
    training_runner.start(
        run_args(run, "--max_train_steps", "8", "--checkpointing_steps", "3"), console, {"nan_loss_at_calls": [5]}
    )
    assert training_runner.wait() == 1
    [error] = error_lines(console)
    assert error.startswith("error: step 5: the loss is nan; the run stopped without updating the weights")
    assert "checkpoint-3 is its last checkpoint" in error
    assert max(read_jsonl_log(run / "logs" / "train.jsonl")) == 4
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-3"]
    assert not (run / "model_index.json").exists()


@pytest.mark.slow
def test_nan_losses_can_be_skipped_one_update_each(tmp_path, training_runner):
    run, console = tmp_path / "run", tmp_path / "console.txt"
    args = run_args(run, "--max_train_steps", "8", "--on_nonfinite_loss", "skip")
    training_runner.start(args, console, {"nan_loss_at_calls": [5, 6]})
    assert training_runner.wait() == 0
    warnings = [line for line in console.read_text().splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: step {step}: the loss is nan; its update was skipped (--on_nonfinite_loss skip)" for step in (5, 6)
    ]
    log = read_jsonl_log(run / "logs" / "train.jsonl")
    assert [log[step]["nonfinite_steps"] for step in (4, 5, 6, 8)] == [0, 1, 2, 2]
    # No update at steps 5 and 6: the warm-up schedule (5 steps) stands still, then moves on.
    assert log[4]["lr"] == log[5]["lr"] == log[6]["lr"] != log[7]["lr"]
    assert all(torch.isfinite(w).all() for w in weights(run).values())
    assert json.loads((run / "training_info.json").read_text())["nonfinite_steps"] == 2


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_and_a_killed_run_leaves_no_lock(tmp_path, training_runner):
    run, console = tmp_path / "run", tmp_path / "console.txt"
    argv = run_args(run, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")
    pid = training_runner.start([*argv, "--max_train_steps", "2000"], console)
    try:
        wait_until(lambda: last_logged_step(run) > 2, pid, console)  # a new folder: every line is this run's
        second = os.fork()  # another process, as another run is (a fork of this one spares the imports)
        if second == 0:
            sys.stderr = open(tmp_path / "second.txt", "w", buffering=1)  # noqa: SIM115 (the child exits at once)
            os._exit(train_unconditional_command(argv))
        assert os.waitstatus_to_exitcode(os.waitpid(second, 0)[1]) == 2
        assert (tmp_path / "second.txt").read_text().strip().splitlines() == [
            f"error: --output_dir {run} is in use by another training run or hfddpm command "
            f"(process {pid}); wait for it to end, or choose another folder"
        ]
    finally:
        os.kill(pid, signal.SIGKILL)
        assert training_runner.wait() == -signal.SIGKILL
    step = max(int(path.name.split("-")[1]) for path in (run / "checkpoints").glob("checkpoint-*"))
    training_runner.start([*argv, "--max_train_steps", str(step + 2)], console)  # the lock is free again
    assert training_runner.wait() == 0
    assert f"Resuming from {run / 'checkpoints' / f'checkpoint-{step}'}" in console.read_text()


class OneProcess:
    """What `check_step` uses of an Accelerator, for one process."""

    def __init__(self, scaler=None):
        self.scaler = scaler

    def gather(self, tensor):
        return tensor


@pytest.mark.parametrize(
    "loss, grad_norm, scaler, fault",
    [
        (0.5, 3.0, None, None),
        (float("nan"), 3.0, None, "the loss is nan"),
        (float("inf"), float("nan"), None, "the loss is inf"),
        (0.5, float("inf"), None, "the gradient norm is inf"),
        (0.5, float("inf"), "fp16 grad scaler", None),  # the scaler skips that update itself; the loop counts it
        (float("nan"), float("inf"), "fp16 grad scaler", "the loss is nan"),
    ],
)
def test_check_step_flags_non_finite_values(loss, grad_norm, scaler, fault):
    check = check_step(OneProcess(scaler), torch.tensor(loss), torch.tensor(grad_norm), StopRequest())
    assert check == StepCheck(fault=fault, stop_signal=None)


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (ValueError("--x must be in [1, inf), got 0\nmore detail"), 2, "error: --x must be in [1, inf), got 0"),
        (ValueError(), 2, "error: ValueError"),  # no message: its type, not an IndexError
        (CheckpointError("cannot resume from c: torn"), 1, "error: cannot resume from c: torn"),
        (RunInterrupted("SIGTERM: stopped at step 3", signal.SIGTERM), 143, "SIGTERM: stopped at step 3"),
    ],
)
def test_a_fault_is_one_line_and_an_exit_status(error, status, line, capsys):
    def train():
        raise error

    assert run_command(train) == status
    assert capsys.readouterr().err.splitlines() == [line]


@pytest.mark.parametrize(
    ("value", "finite"),
    [(1.0, True), (3e38, True), (float("nan"), False), (float("inf"), False), (float("-inf"), False)],
    ids=["ordinary", "squares past float32 (the norm overflows)", "nan", "inf", "-inf"],
)
def test_weights_are_finite_exactly_when_every_weight_is(value, finite):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    with torch.no_grad():
        model[1].weight[0, 1] = value
    assert weights_are_finite(model) is finite


@pytest.fixture
def sigint_handler():
    """Set SIGINT's handler for the test (`nohup` and background jobs start with it ignored), then restore it."""
    previous = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, previous)


def test_a_signal_is_recorded_for_the_step_and_a_second_sigint_interrupts_at_once(sigint_handler):
    sigint_handler(signal.default_int_handler)  # Python's own, as in a terminal
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        check = check_step(OneProcess(), torch.tensor(0.5), torch.tensor(1.0), stop)
        assert check == StepCheck(fault=None, stop_signal=signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous
    with pytest.raises(KeyboardInterrupt), StopRequest():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)


def test_a_sigint_ignored_when_the_run_starts_stays_ignored(sigint_handler):
    sigint_handler(signal.SIG_IGN)  # as under nohup or `cmd &`
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        assert stop.signum is None
        signal.raise_signal(signal.SIGTERM)  # SIGTERM is still honoured
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


IGNORING_SIGINT = "import signal, subprocess, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
IGNORING_SIGINT += "sys.exit(subprocess.call(sys.argv[1:]))"


@pytest.mark.slow
def test_the_signal_tests_pass_in_a_background_job():
    """As `python -m pytest -q &` runs them: a child of a process that ignores SIGINT starts with it ignored."""
    tests = [
        f"{__file__}::{name}"
        for name in (
            "test_a_signal_is_recorded_for_the_step_and_a_second_sigint_interrupts_at_once",
            "test_a_sigint_ignored_when_the_run_starts_stays_ignored",
        )
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            IGNORING_SIGINT,
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *tests,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "2 passed" in result.stdout


def memory_records(console: Path) -> list[dict]:
    return [json.loads(line[7:]) for line in console.read_text().splitlines() if line.startswith("MEMORY ")]


@pytest.mark.slow
def test_many_training_runs_in_one_process_keep_memory_flat(tmp_path, training_runner):
    console = tmp_path / "console.txt"
    training_runner.start(run_args(tmp_path / "run", "--max_train_steps", "3"), console, repeat=6)
    assert training_runner.wait() == 0
    memory = memory_records(console)
    assert len(memory) == 6
    # After two warm-up runs, three more add less than 10 MB, resident or peak, to a process of ~520 MB (measured:
    # under 1 MB). One model and its optimizer state kept per run would add ~13 MB each.
    assert memory[-1]["resident_kb"] - memory[2]["resident_kb"] < 10_000, memory
    assert memory[-1]["peak_kb"] - memory[2]["peak_kb"] < 10_000, memory


def sample_many_batches(records: Path) -> None:
    """32 batches of 8 with one pipeline, memory recorded after every 8, written to `records`."""
    torch.manual_seed(0)
    pipe = HFDDPMPipeline(create_unet("tiny", in_channels=1, sample_size=8), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    memory = []
    for block in range(4):
        for _ in range(8):
            pipe(batch_size=8, num_inference_steps=5, generator=torch.manual_seed(block), output_type="pil")
        memory.append(memory_kb())
    records.write_text(json.dumps(memory))


@pytest.mark.slow
def test_sampling_many_batches_keeps_memory_flat(tmp_path):
    child = os.fork()  # a process whose memory is the sampling's (a fork of this one spares the imports)
    if child == 0:
        status = 1
        try:
            sample_many_batches(tmp_path / "memory.json")
            status = 0
        finally:
            os._exit(status)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    memory = json.loads((tmp_path / "memory.json").read_text())
    # 24 batches after the first 8: less than 5 MB more, resident or peak (measured: under 0.1 MB).
    assert memory[-1]["resident_kb"] - memory[0]["resident_kb"] < 5_000, memory
    assert memory[-1]["peak_kb"] - memory[0]["peak_kb"] < 5_000, memory
