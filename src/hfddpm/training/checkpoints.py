"""Training checkpoints that are complete or absent: written to a partial folder, then renamed into place.

A checkpoint `checkpoints/checkpoint-<step>/` holds Accelerate's state (model, optimizer, RNG states) and hfddpm's
own: the EMA weights and the training-step randomness as safetensors, the learning-rate schedule and the run state
(position in the data, counters) as JSON, with what defines the run — the options that may not change, the data's
fingerprint and a student's teacher's — which a resume must match (`check_same_run`). Nothing of hfddpm's own is
pickled, and Accelerate loads its pickled files (optimizer, RNG states) with `torch.load(weights_only=True)`, which
refuses any pickle that would run code.

A checkpoint folder is complete or absent: it is written as `.checkpoint-<step>.partial`, flushed to disk, given
`training_state.json` last, and only then renamed into place; old checkpoints are renamed to a hidden name before
they are deleted. A run killed at any moment, or out of disk space, leaves the earlier checkpoints as they were.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..arguments import first_line
from ..durable import finish_tree, is_disk_full, remove_tree, write_text
from ..records import read_record
from .faults import CheckpointError

if TYPE_CHECKING:
    from accelerate import Accelerator

TRAINING_STATE = "training_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# What reading a damaged or tampered checkpoint raises: a missing file, a torn file, a pickle weights_only refuses.
_UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError)


@dataclass
class RunState:
    """The position and counters of a run; `record` is what a checkpoint's training_state.json holds of it."""

    global_step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch being read
    batches_in_epoch: int = 0  # batches of that epoch already trained on
    skipped_steps: int = 0  # updates the fp16 grad scaler skipped (overflow)
    nonfinite_steps: int = 0  # updates skipped for a NaN or Inf loss or gradient (--on_nonfinite_loss skip)
    wall_time_seconds: float = 0.0  # training time of the run's earlier segments, before the last resume

    def record(self, batches_per_epoch: int, wall_time_seconds: float) -> dict:
        """The state to checkpoint, with an epoch read to its end recorded as the start of the next one."""
        record = {**asdict(self), "wall_time_seconds": round(wall_time_seconds, 1)}
        if self.batches_in_epoch == batches_per_epoch:
            record.update(epoch=self.epoch + 1, batches_in_epoch=0)
        return record

    @classmethod
    def from_record(cls, record: dict) -> RunState:
        """The state a checkpoint recorded (counters absent from older checkpoints start at 0)."""
        return cls(**{field.name: record[field.name] for field in fields(cls) if field.name in record})


class CheckpointManager:
    """The checkpoints of one run, in `folder`, keeping at most `total_limit` of them (all if None)."""

    def __init__(self, folder: str | os.PathLike, total_limit: int | None = None) -> None:
        self.folder = Path(folder)
        self.total_limit = total_limit

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        steps = {path: int(match[1]) for path in self.folder.glob("*") if (match := _NAME.match(path.name))}
        return sorted((path for path in steps if (path / TRAINING_STATE).is_file()), key=steps.__getitem__)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        return next(reversed(self.complete()), None)

    def resolve(self, spec: str) -> Path:
        """The checkpoint `spec` names: "latest", or a checkpoint folder."""
        if spec == "latest":
            if (latest := self.latest()) is None:
                raise FileNotFoundError(
                    f"--resume_from_checkpoint latest: no complete checkpoint in {self.folder}; "
                    "start without --resume_from_checkpoint"
                )
            return latest
        path = Path(spec)
        if not (path / TRAINING_STATE).is_file():
            raise FileNotFoundError(
                f"--resume_from_checkpoint {spec}: not a complete checkpoint (no {TRAINING_STATE}); "
                f"use 'latest' or one of {[p.name for p in self.complete()]}"
            )
        return path

    def save(
        self,
        accelerator: Accelerator,
        step: int,
        run_state: dict,
        objects: dict,
        generator: torch.Generator,
        identity: dict,
    ) -> Path:
        """Save the run's state at optimizer step `step`, called on every process: the JSON `run_state` and the run's
        `identity`, the state dicts of `objects` (EMA, schedule, objective; by the main process) and `generator` (per
        process). Raises
        `CheckpointError` on every process when one could not write its part, after deleting the partial folder."""
        final = self.folder / f"checkpoint-{step}"
        partial = self.folder / f".checkpoint-{step}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        failure = None
        try:
            accelerator.save_state(str(partial))
            save_state_dict({"generator": generator.get_state()}, partial / f"randomness_{accelerator.process_index}")
            if accelerator.is_main_process:
                for name, obj in objects.items():
                    save_state_dict(obj.state_dict(), partial / name)
        except (OSError, RuntimeError, SafetensorError) as error:  # torch and safetensors wrap the OS error
            failure = error
        failed = torch.tensor([failure is not None], device=accelerator.device)
        if accelerator.gather(failed).any():  # every process stops, not only the one that failed
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(self._write_failure(final, failure)) from failure
        if accelerator.is_main_process:
            finish_tree(partial)
            state = {"global_step": step, **run_state, "run": identity, "hfddpm_version": __version__}
            write_text(partial / TRAINING_STATE, json.dumps(state))
            if final.exists():
                remove_tree(final)
            os.replace(partial, final)
            self._remove_old()
        accelerator.wait_for_everyone()
        return final

    def load(
        self, accelerator: Accelerator, path: Path, objects: dict, generator: torch.Generator, identity: dict
    ) -> dict:
        """Restore what `save` wrote and return its run state, once `check_same_run` has compared `identity` with the
        one it records; `CheckpointError` when a file is missing, damaged, or holds a pickle that would run code."""
        check_same_run(read_record(path / TRAINING_STATE).get("run") or {}, identity, path)
        try:
            accelerator.load_state(str(path))
            generator.set_state(load_state_dict(path / f"randomness_{accelerator.process_index}")["generator"].cpu())
            for name, obj in objects.items():
                obj.load_state_dict(load_state_dict(path / name))
            return read_record(path / TRAINING_STATE)
        except _UNREADABLE as error:
            reason = first_line(error)
            if isinstance(error, pickle.UnpicklingError):
                reason = "it holds a pickle that would run code when loaded (refused by torch.load weights_only)"
            earlier = [p.name for p in self.complete() if p != path]
            raise CheckpointError(
                f"cannot resume from {path}: {reason}; resume from an earlier checkpoint "
                f"({', '.join(earlier) or 'none left'}) with --resume_from_checkpoint PATH, or start over"
            ) from error

    def _write_failure(self, final: Path, error: BaseException | None) -> str:
        """The one-line message for a checkpoint that could not be written."""
        kept_path = self.latest()
        kept = f"{kept_path.name} is kept" if kept_path else "no earlier checkpoint exists"
        if error is None:  # another process failed; it reports the reason
            return f"another process could not write {final.name}; {kept}"
        reason = first_line(error)
        # torch.save's writer drops the OS error: judge by the room left against the size of the last checkpoint.
        needed = sum(f.stat().st_size for f in kept_path.rglob("*") if f.is_file()) if kept_path else 0
        if is_disk_full(error) or shutil.disk_usage(self.folder).free < needed:
            return (
                f"no space left to write {final} ({reason}); {kept}: free disk space or choose another "
                "--output_dir, then resume with --resume_from_checkpoint latest"
            )
        return f"could not write {final} ({reason}); {kept}: fix the folder, then resume with --resume_from_checkpoint"

    def _remove_old(self) -> None:
        """Delete leftovers of interrupted saves and removals, and the checkpoints beyond `total_limit`."""
        for pattern in (".checkpoint-*.partial", ".checkpoint-*.removing"):
            for path in self.folder.glob(pattern):
                shutil.rmtree(path, ignore_errors=True)
        if self.total_limit is not None:
            for path in self.complete()[: -self.total_limit]:
                remove_tree(path)


def check_same_run(recorded: dict, identity: dict, checkpoint: Path) -> None:
    """Refuse, in one line naming the option and both values, a resume whose `identity` differs from the one the
    checkpoint `recorded`: other options that define the run, other data, or a teacher whose weights changed. (A
    checkpoint written before runs recorded their identity is trusted.)"""
    for name, value in identity.items():
        if name not in recorded or recorded[name] == value:
            continue
        if name == "data":
            problem = f"the training data differs from the data {checkpoint.name} was trained on (fingerprint "
            problem += f"{value}, recorded {recorded[name]}); pass the run's data"
        elif name == "teacher_weights":
            problem = f"the teacher's weights changed since {checkpoint.name} (fingerprint {value}, recorded "
            problem += f"{recorded[name]}); pass the teacher the run started from"
        else:
            problem = f"--{name} {value} differs from the {recorded[name]} {checkpoint.name} was trained with; pass "
            problem += f"--{name} {recorded[name]}"
        raise ValueError(f"cannot resume: {problem}, or start a new run (--overwrite_output_dir or another folder)")


def save_state_dict(state: dict, stem: Path) -> None:
    """Write a state dict as `<stem>.safetensors` (its tensors and lists of tensors) and `<stem>.json` (the rest)."""
    tensors, plain = {}, {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            tensors.update({f"{key}.{i}": v.detach().cpu().contiguous() for i, v in enumerate(value)})
            plain[f"{key}.__length__"] = len(value)
        else:
            plain[key] = value
    save_file(tensors, f"{stem}.safetensors")
    Path(f"{stem}.json").write_text(json.dumps(plain))


def load_state_dict(stem: Path) -> dict:
    """Inverse of `save_state_dict`."""
    state = json.loads(Path(f"{stem}.json").read_text())
    tensors = load_file(f"{stem}.safetensors")
    for key in [key for key in state if key.endswith(".__length__")]:
        name = key.removesuffix(".__length__")
        state[name] = [tensors.pop(f"{name}.{i}") for i in range(state.pop(key))]
    return state | tensors
