"""A run's output folder, which it owns for its life: checked before any work, locked against a second writer
(`hfddpm.run_folder.run_lock`), and emptied by --overwrite_output_dir of what a run wrote there, never of anything
else, and only once everything the run needs has been checked.

Only a folder holding the run's record (`RUN_RECORD`) may lose the names a run writes (`RUN_OUTPUTS`). A folder
holding those names without the record holds the user's files (a pipeline they saved, their README.md), and is
refused whatever the flags; so is a run folder where one of those names is a link, which an overwrite or the run
would follow out of the folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..durable import check_output_folder
from ..run_folder import RUN_EXPORT, RUN_RECORD, RUN_RECORDS, launched_as_main_process, written_by_run
from .config import RunConfig

# Everything a run writes at the top of its output folder, and so all that --overwrite_output_dir may remove: the
# pipeline, its card, checkpoints, grids, logs, the run's JSON records (its mark, `RUN_RECORD`, last) and its export.
RUN_OUTPUTS = (
    "checkpoints",
    "samples",
    "logs",
    "unet",
    "scheduler",
    "vae",
    "model_index.json",
    "README.md",
    RUN_EXPORT,
)
RUN_OUTPUTS += tuple(sorted(RUN_RECORDS, key=lambda name: name == RUN_RECORD))


def check_output_dir(config: RunConfig) -> Path:
    """The output folder, refused when it cannot be created or written, holds files a run would replace but no run
    wrote, links where a run writes, or an earlier run that the config neither resumes nor overwrites."""
    output_dir = check_output_folder(config.output_dir, "--output_dir")
    present = [name for name in RUN_OUTPUTS if (output_dir / name).exists() or (output_dir / name).is_symlink()]
    if present and not written_by_run(output_dir):
        raise ValueError(
            f"--output_dir {output_dir} holds {', '.join(present)}, which a run would replace, but no training run "
            f"wrote it (no {RUN_RECORD}); choose a new or empty --output_dir"
        )
    if links := [name for name in present if (output_dir / name).is_symlink()]:
        raise ValueError(
            f"--output_dir {output_dir}: {links[0]} is a link, which the run would write or delete through; replace "
            "it with a folder of its own, or choose another --output_dir"
        )
    if holds_earlier_run(output_dir) and config.resume_from_checkpoint is None and not config.overwrite_output_dir:
        raise ValueError(
            f"{output_dir} holds an earlier run; pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to replace it, or another --output_dir"
        )
    return output_dir


def holds_earlier_run(output_dir: Path) -> bool:
    """Whether `output_dir` holds a run's checkpoints or saved pipeline."""
    return written_by_run(output_dir) and (
        (output_dir / "checkpoints").is_dir() or (output_dir / "model_index.json").is_file()
    )


def replace_earlier_runs(config: RunConfig, accelerator: Any, folders: list[Path]) -> None:
    """With --overwrite_output_dir (and no resume), delete what earlier runs wrote in `folders` (`RUN_OUTPUTS`,
    nothing else), on the main process; the others wait. Called once the data, the network and the objective are
    built, so input that is refused never costs the earlier run."""
    if config.overwrite_output_dir and config.resume_from_checkpoint is None and launched_as_main_process():
        for folder in folders:
            if holds_earlier_run(folder):
                for part in RUN_OUTPUTS:
                    path = folder / part
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
