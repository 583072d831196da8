"""Publishing a checkpoint folder to the Hugging Face Hub: which files go, the card, and the upload itself.

What is published loads: before a file is read, the folder passes the checks `HFDDPMPipeline.from_pretrained`
makes (weights present, complete, finite, matching their config; no code, no pickle). Only what a user of the model
needs is published: `model_index.json`, the JSON configs and safetensors weights of each component it names — a
plain folder name, never a path or a link out of the folder — the model card (README.md), sample and evaluation
images, and the run's JSON records (`training_args.json`, `training_info.json`, `evaluation.json`). Optimizer states,
random-generator pickles and any other pickle stay local unless `include_training_state` asks for the `checkpoints/`
folder. No link is followed. The token is read from the argument, `HF_TOKEN` or the login cache and never written
anywhere.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from . import durable
from .arguments import first_line
from .model_cards import model_card
from .pipelines.loading import required_components, safe_components
from .records import RESAVE, read_record
from .run_folder import RUN_EXPORT, RUN_RECORDS

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo


class HubError(OSError):
    """Publishing failed; the message says why and that the local checkpoint is untouched."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if the Hub accepts it as a repository id ('name' or 'user/name'), else a one-line ValueError (a
    TypeError for what is not a string)."""
    if not isinstance(repo_id, str):
        raise TypeError(f"a Hub repository id is a string 'user/name', got {repo_id!r} ({type(repo_id).__name__})")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(
            f"{repo_id!r} is not a Hub repository id: use 'user/name' with letters, digits, '-', '_' and '.'"
        ) from None
    return repo_id


def resolve_token(token: str | None, folder: str | os.PathLike, flag: str = "--token") -> str:
    """The token to push with: `token` (the command line's `flag`), else $HF_TOKEN or the one `hf auth login`
    saved; none is a one-line error."""
    token = token or get_token()
    if not token:
        raise HubError(f"no Hugging Face token: pass {flag}, set HF_TOKEN or run `hf auth login`; {folder} is kept")
    return token


def files_to_publish(folder: str | os.PathLike, include_training_state: bool = False) -> list[str]:
    """The paths (relative, '/'-separated, sorted) of the files of `folder` that a Hub repository gets, once the
    pipeline passes `from_pretrained`'s checks; plain files only, never a link."""
    folder = Path(folder)
    index = read_record(
        folder / "model_index.json", "holds no pipeline (no model_index.json); save or train one first"
    )
    components = [name for name, entry in index.items() if not name.startswith("_") and isinstance(entry, list)]
    if odd := [name for name in components if not name.isidentifier() or (folder / name).is_symlink()]:
        raise HubError(
            f"{folder}/model_index.json names the component {odd[0]!r}, which is not a plain folder of the "
            f"pipeline; {RESAVE}"
        )
    safe_components(folder, False, {}, required_components(index))  # the weights load, complete and finite
    patterns = ["model_index.json", *RUN_RECORDS, "*.png", "samples/*.png"]
    patterns += [f"{name}/*.{suffix}" for name in components for suffix in ("json", "safetensors")]
    patterns += ["checkpoints/**/*"] if include_training_state else []
    inside = folder.resolve()
    files = {
        path.relative_to(folder).as_posix()
        for pattern in patterns
        for path in folder.glob(pattern)
        if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(inside)
    }
    return sorted(files)


def check_export_dir(folder: str | os.PathLike, export_dir: str | os.PathLike) -> Path:
    """`export_dir` if an export may go there: a new or empty folder apart from the run folder `folder`, or the run's
    own `RUN_EXPORT` folder; else a one-line ValueError. An export replaces nothing else a folder holds."""
    run, export = Path(folder).resolve(), Path(export_dir).resolve()
    if export == run / RUN_EXPORT:
        if not export.exists() or holds_only_an_export(folder, export):
            return export
        raise ValueError(
            f"{export_dir} holds files that no export of {folder} wrote; move them, or export to a new or empty folder"
        )
    if export == run or run in export.parents:
        raise ValueError(
            f"export folder {export_dir} is inside the run folder {folder}; export to a folder outside it"
        )
    durable.check_new_folder(export_dir, "export folder")  # which cannot hold the run folder
    return export


def holds_only_an_export(folder: str | os.PathLike, export_dir: Path) -> bool:
    """Whether everything in `export_dir` has a name an export of `folder` writes at its top (an earlier export,
    which may be replaced: its checkpoints and grids may since have been rotated away); anything else makes it a
    folder to keep."""
    exported = {name.split("/")[0] for name in files_to_publish(folder, include_training_state=True)}
    exported |= {"README.md", "checkpoints", "samples", *RUN_RECORDS}
    return export_dir.is_dir() and all(
        entry.name in exported or entry.suffix == ".png" for entry in export_dir.iterdir()
    )


def export_for_hub(
    folder: str | os.PathLike, export_dir: str | os.PathLike, repo_id: str, include_training_state: bool = False
) -> list[str]:
    """Write the exact folder a push uploads: the published files and the model card (README.md), into `export_dir`,
    a new or empty folder (anything else is refused before a file is copied: `check_export_dir`).

    It is assembled in a hidden sibling `.partial` folder of its own and renamed into place, so an interrupted export
    leaves no half folder. Returns the files written.
    """
    check_repo_id(repo_id)
    export_dir = check_export_dir(folder, export_dir)
    files = files_to_publish(folder, include_training_state)
    try:
        with durable.new_folder(export_dir) as partial:
            for name in files:
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, partial / name)
            model_card(folder, repo_id).save(partial / "README.md")
            if export_dir == Path(folder).resolve() / RUN_EXPORT and export_dir.exists():
                durable.remove_tree(export_dir)  # the run's earlier export
    except OSError as error:
        raise HubError(
            f"{durable.write_problem(error)} to export {folder} into {export_dir} ({error.strerror or error}); "
            "nothing was exported: free disk space or choose another folder"
        ) from error
    return sorted([*files, "README.md"])


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    include_training_state: bool = False,
    run_as_future: bool = False,
    endpoint: str | None = None,
) -> CommitInfo | Future[CommitInfo]:
    """Publish `folder` to the Hub repository `repo_id` (created if needed, `private` if asked) on `revision`, in one
    commit of huggingface_hub's `create_commit`: the files `files_to_publish` selects and the model card for
    `repo_id`. With `run_as_future` it runs in the background (a training loop keeps going) and the files are read
    first, so a later save cannot change them during the upload; a `Future` is returned, otherwise the `CommitInfo`.
    Failures raise a one-line `HubError`."""
    check_repo_id(repo_id)
    token = resolve_token(token, folder)
    files = files_to_publish(folder, include_training_state)
    read = (lambda path: path.read_bytes()) if run_as_future else (lambda path: path)
    operations = [CommitOperationAdd(name, read(Path(folder) / name)) for name in files]
    operations.append(CommitOperationAdd("README.md", str(model_card(folder, repo_id)).encode()))
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        message = commit_message or f"Upload {Path(folder).resolve().name} with hfddpm"
        return api.create_commit(
            repo_id, operations, commit_message=message, revision=revision, run_as_future=run_as_future
        )
    except Exception as error:
        raise HubError(
            f"could not push to {repo_id} at {endpoint or constants.ENDPOINT}: {first_line(error)}; {folder} is kept"
        ) from error
