"""Files and folders that are the old version or the new one, never half of either, whenever the process dies.

A file is written beside its target under a temporary name, flushed to disk, then renamed over the target
(`os.replace` is atomic within a filesystem); a folder is removed by renaming it to a hidden name first, so a kill
during the removal leaves a hidden leftover, never a visible half-folder. What is written gets the modes a plain
write would give under the umask (safetensors writes its files 0600, `mkdtemp` its folders 0700).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The errors that mean the filesystem is out of room: no space, quota exceeded, file-size limit.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, move it onto `path`, else delete it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        yield temporary
        _finish(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def new_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside `folder`; when the block succeeds, flush it and rename it to `folder`
    (absent or empty: nothing in it is replaced), else delete it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        yield temporary
        finish_tree(temporary)
        os.replace(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def finish_tree(folder: str | os.PathLike) -> None:
    """Flush every file under `folder` to disk, so that a folder renamed into place afterwards survives a power cut,
    and give it and everything in it the modes a plain write would."""
    for path in [Path(folder), *Path(folder).rglob("*")]:
        _finish(path)


def move_files_into(staging: str | os.PathLike, target: str | os.PathLike, last: str | None = None) -> None:
    """Move every file of `staging` to the same relative place under `target`, each one replacing its old version
    atomically, the files named `last` after all others; then remove `staging`. Call `finish_tree(staging)` first
    for the moved files to survive a power cut."""
    staging, target = Path(staging), Path(target)
    files = sorted((path for path in staging.rglob("*") if path.is_file()), key=lambda path: path.name == last)
    for file in files:
        destination = target / file.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, destination)
    shutil.rmtree(staging)


def remove_tree(folder: str | os.PathLike) -> None:
    """Remove `folder`: renamed to a hidden `.<name>.removing` first, then deleted."""
    folder = Path(folder)
    doomed = folder.with_name(f".{folder.name}.removing")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) says the disk, the quota or the file-size limit is full.

    safetensors and torch report write failures as their own exception types with the OS message in the text.
    """
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(number) in str(error) for number in DISK_FULL_ERRNOS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _finish(path: Path) -> None:
    """Flush a file to disk, and give a file or folder the mode a plain write gives under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    if path.is_file():
        with open(path, "rb") as file:
            os.fsync(file.fileno())
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def check_output_folder(folder: str | os.PathLike, what: str) -> Path:
    """`folder` as a Path if it is, or can be created as, a folder this process can write in; else a one-line
    ValueError naming `what` (e.g. "--output_dir") and the fix. Nothing is created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file; name a folder")
    _check_writable_place(folder, what)
    return folder


def check_output_file(path: str | os.PathLike, what: str, overwrite: bool = False) -> Path:
    """`path` as a Path if a file can be written there: not a folder, not an existing file unless `overwrite`, in a
    folder that is or can be made writable; else a one-line ValueError."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; name a file in it")
    if path.exists() and not overwrite:
        raise ValueError(f"{what} {path} exists; pass --overwrite to replace it, or name another file")
    _check_writable_place(path.parent, what, path)
    return path


def _check_writable_place(folder: Path, what: str, target: Path | None = None) -> None:
    """The nearest existing one of `folder` and its parents must be a folder this process can write in."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"{what} {target or folder} lies under {existing}, which is a file; name a folder elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {target or folder}: {existing} is not writable; choose a folder you can write to")


def check_new_folder(folder: str | os.PathLike, what: str) -> Path:
    """`folder` as a Path if it is absent or an empty folder that can be written (`check_output_folder`): a folder
    the project may fill without replacing anything; else a one-line ValueError."""
    folder = check_output_folder(folder, what)
    if folder.is_dir() and any(folder.iterdir()):
        raise ValueError(f"{what} {folder} is not empty; name a new or empty folder (nothing was changed)")
    return folder


def write_problem(error: BaseException) -> str:
    """How an error line names a failed write: "no space left" when the disk is full, else "could not write"."""
    return "no space left" if is_disk_full(error) else "could not write"
