"""A run folder: what marks it as a run's, and the lock every writer into it holds.

A folder is a run's when it holds the run's record (`RUN_RECORD`, written before anything else). Every process that
writes into a run folder — the run itself, `hfddpm evaluate` recording its numbers, `hfddpm analytic-variance
--in_place`, `hfddpm push` reading a consistent snapshot — holds its lock (`run_lock`) while it does, so no two
write at once and no record is paired with weights written meanwhile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .records import RecordError, read_record

# The options that say which images (and labels) a run trains on; the local paths among them are recorded relative
# to the run folder (`recorded_path`), so that they are found from wherever a later command starts.
DATA_OPTIONS = ("dataset_name", "dataset_config_name", "train_data_dir", "split", "image_column", "label_column")
LOCAL_DATA = ("dataset_name", "train_data_dir")

# The record every run writes before anything else: the mark of a folder a run wrote.
RUN_RECORD = "training_args.json"
RUN_RECORDS = (RUN_RECORD, "training_info.json", "evaluation.json", "distillation.json")
# A training run's own export folder (--hub_dry_run), which a later export of the same run replaces.
RUN_EXPORT = "hub-export"
# Held (flock) by the process writing into a run folder; the kernel releases it when the process dies, however.
LOCK_FILE = ".hfddpm-run.lock"


def written_by_run(folder: str | os.PathLike) -> bool:
    """Whether a training run wrote `folder`: it holds the run's record, naming its output folder (a file of the same
    name that is no such record is the user's)."""
    try:
        return "output_dir" in read_record(Path(folder) / RUN_RECORD)
    except RecordError:
        return False


def recorded_path(path: str, folder: str | os.PathLike) -> str:
    """`path` as a run folder records it: a relative local path relative to `folder`, anything else as given."""
    return os.path.relpath(path, folder) if os.path.exists(path) and not os.path.isabs(path) else path


def recorded_data(folder: str | os.PathLike) -> dict:
    """The data options the run in `folder` records ({} when it records none), local paths found where they were
    recorded (relative to `folder`); a recorded image folder that is gone is a one-line error."""
    record = read_record(Path(folder) / RUN_RECORD)
    data = {name: record[name] for name in DATA_OPTIONS if record.get(name) is not None}
    for name in LOCAL_DATA:
        if name in data and os.path.exists(path := os.path.normpath(os.path.join(folder, data[name]))):
            data[name] = path
        elif name == "train_data_dir" and name in data:
            raise ValueError(
                f"{folder}/{RUN_RECORD} records --{name} {data[name]}, which is not found from the run folder; pass "
                "the data it was trained on"
            )
    return data


@contextlib.contextmanager
def run_lock(folder: Path, what: str = "--output_dir") -> Iterator[None]:
    """Hold `folder`'s lock (`flock` on `LOCK_FILE`, by the main process of a launch) while the block runs, creating
    the folder; another holder is refused in one line naming `what` and the holder. The kernel drops the lock when
    the holder dies, even by SIGKILL; the file may stay. Folders created here that hold nothing but the lock file at
    the end (the run was refused before it wrote anything) are removed again. Without `fcntl` (Windows) nothing
    locks."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or not launched_as_main_process():
        yield
        return
    created = [parent for parent in (folder, *folder.absolute().parents) if not parent.exists()]
    descriptor = _take_lock(fcntl, folder, what)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            if created and [path.name for path in folder.iterdir()] == [LOCK_FILE]:
                (folder / LOCK_FILE).unlink()
                with contextlib.suppress(OSError):  # a folder another run wrote in stays, and so do its parents
                    for parent in created:  # deepest first
                        parent.rmdir()
    finally:
        os.close(descriptor)


def _take_lock(fcntl: Any, folder: Path, what: str) -> int:
    """Open and `flock` `folder`'s `LOCK_FILE` (creating both), or refuse in one line naming the holder. A lock taken
    on a file that a refused run removed meanwhile (its inode no longer the path's) is taken again on the new file,
    so two runs never both hold "the" lock."""
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ValueError(f"{what} {folder} cannot be written ({error.strerror}); choose another") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise ValueError(
                f"{what} {folder} is in use by another training run or hfddpm command (process {holder}); wait for "
                "it to end, or choose another folder"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(folder / LOCK_FILE).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        os.close(descriptor)


def launched_as_main_process() -> bool:
    """Whether this process is the main one of its launch (RANK 0, or no distributed launcher): the one that prints
    and writes, before Accelerate exists to say so."""
    return os.environ.get("RANK", "0") == "0"
