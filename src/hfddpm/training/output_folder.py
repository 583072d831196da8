"""A run's output folder, which it owns for its life: checked before any work, locked against a second run, and
emptied by --overwrite_output_dir of what a run wrote there, never of anything else.

A folder is a run's when it holds the run's record (`RUN_RECORD`, written before anything else); only then may an
overwrite delete the names a run writes (`RUN_OUTPUTS`). A folder holding those names without the record holds the
user's files (a pipeline they saved, their README.md), and is refused whatever the flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..durable import check_output_folder
from ..hub import RUN_EXPORT, RUN_RECORDS
from .config import RunConfig, launched_as_main_process

# Everything a run writes at the top of its output folder, and so all that --overwrite_output_dir may remove: the
# pipeline, its card, checkpoints, grids, logs, the run's JSON records and its Hub export.
RUN_OUTPUTS = ("checkpoints", "samples", "logs", "unet", "scheduler", "model_index.json", "README.md")
RUN_OUTPUTS += (*RUN_RECORDS, RUN_EXPORT)
# The record every run writes before anything else (`artefacts.record_arguments`): the mark of a folder a run wrote.
RUN_RECORD = "training_args.json"
# Held (flock) by a run's main process for the run's life; the kernel releases it when the process dies, however.
LOCK_FILE = ".hfddpm-run.lock"


def check_output_dir(config: RunConfig) -> Path:
    """The output folder, refused when it cannot be created or written, holds files a run would replace but no run
    wrote, or holds an earlier run that the config neither resumes nor overwrites."""
    output_dir = check_output_folder(config.output_dir, "--output_dir")
    foreign = [] if written_by_run(output_dir) else [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if foreign:
        raise ValueError(
            f"--output_dir {output_dir} holds {', '.join(foreign)}, which a run would replace, but no training run "
            f"wrote it (no {RUN_RECORD}); choose a new or empty --output_dir"
        )
    if holds_earlier_run(output_dir) and config.resume_from_checkpoint is None and not config.overwrite_output_dir:
        raise ValueError(
            f"{output_dir} holds an earlier run; pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to replace it, or another --output_dir"
        )
    return output_dir


def written_by_run(output_dir: Path) -> bool:
    """Whether a training run wrote `output_dir`: it holds the run's record, a JSON object naming its output folder."""
    try:
        record = json.loads((output_dir / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable or not JSON: not a run's record
        return False
    return isinstance(record, dict) and "output_dir" in record


def holds_earlier_run(output_dir: Path) -> bool:
    """Whether `output_dir` holds a run's checkpoints or saved pipeline."""
    return written_by_run(output_dir) and (
        (output_dir / "checkpoints").is_dir() or (output_dir / "model_index.json").is_file()
    )


def remove_earlier_run_outputs(config: RunConfig, accelerator: Any, output_dir: Path) -> None:
    """With --overwrite_output_dir (and no resume), `delete_run_outputs` on the main process; the others wait."""
    if config.overwrite_output_dir and config.resume_from_checkpoint is None and accelerator.is_main_process:
        delete_run_outputs(output_dir)
    accelerator.wait_for_everyone()


def delete_run_outputs(output_dir: Path) -> None:
    """Delete what a run wrote in `output_dir` (`RUN_OUTPUTS`, nothing else), if a run wrote it and holds an earlier
    run; a folder no run wrote loses nothing."""
    if holds_earlier_run(output_dir):
        for part in RUN_OUTPUTS:
            path = output_dir / part
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def output_dir_lock(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir`'s lock (`flock` on `LOCK_FILE`, by the main process of a launch) while the block runs,
    creating the folder; a second run into the same folder is refused in one line. The kernel drops the lock when the
    holder dies, even by SIGKILL; the file may stay. Folders created here that hold nothing but the lock file at the
    end (the run was refused before it wrote anything) are removed again. Without `fcntl` (Windows) nothing locks."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or not launched_as_main_process():
        yield
        return
    created = [folder for folder in (output_dir, *output_dir.absolute().parents) if not folder.exists()]
    descriptor = lock_file(fcntl, output_dir)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            if created and [path.name for path in output_dir.iterdir()] == [LOCK_FILE]:
                (output_dir / LOCK_FILE).unlink()
                with contextlib.suppress(OSError):  # a folder another run wrote in stays, and so do its parents
                    for folder in created:  # deepest first
                        folder.rmdir()
    finally:
        os.close(descriptor)


def lock_file(fcntl: Any, output_dir: Path) -> int:
    """Open and `flock` `output_dir`'s `LOCK_FILE` (creating both), or refuse in one line naming the holder. A lock
    taken on a file that a refused run removed meanwhile (its inode no longer the path's) is taken again on the new
    file, so two runs never both hold "the" lock."""
    while True:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            problem = f"--output_dir {output_dir} cannot be written ({error.strerror})"
            raise ValueError(f"{problem}; choose another") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise ValueError(
                f"--output_dir {output_dir} is in use by another training run (process {holder}); wait for it to "
                "end, or choose another --output_dir"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(output_dir / LOCK_FILE).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        os.close(descriptor)
