"""What `HFDDPMPipeline.from_pretrained` checks before it loads anything: no code from the checkpoint, no pickle.

A checkpoint folder (or a Hub repository's model_index.json, fetched alone first) is refused, in one line naming
the fix, when it names a custom pipeline or a component library other than diffusers and hfddpm, ships a `.py`
file where diffusers would import it, was saved by a newer hfddpm, misses a part, or holds pickle weights only
(unless the caller allows pickles; they are then read with `torch.load(weights_only=True)`, which refuses anything
but tensors).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Collection

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from packaging.version import Version

from .. import __version__

# Weight files that are pickles, which can run code when loaded: refused unless the user opts in, never published.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

# The only libraries model_index.json may load components from: installed code, never code shipped in a checkpoint.
_TRUSTED_LIBRARIES = ("diffusers", "hfddpm")
# Each component loaded from its subfolder, and the config file the subfolder must hold.
_COMPONENT_CONFIGS = {"unet": "config.json", "scheduler": "scheduler_config.json"}


def fetch_model_index(repo_id: str, download_kwargs: dict) -> dict:
    """A Hub repository's model_index.json, fetched alone so that it is checked before diffusers' download reads
    it (which fetches and imports a custom pipeline it names)."""
    hub_kwargs = ("cache_dir", "force_download", "local_files_only", "token", "revision")
    try:
        path = hf_hub_download(
            repo_id, "model_index.json", **{k: download_kwargs[k] for k in hub_kwargs if k in download_kwargs}
        )
    except HFValidationError:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a pipeline folder nor a Hub repository id ('user/name'); check the path"
        ) from None
    except (OSError, EntryNotFoundError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder and its model_index.json could not be fetched from the Hub "
            f"({reason}); check the path or the repository id"
        ) from None
    return _read_json(path, f"{repo_id} has no model_index.json; check the repository id")


def check_checkpoint_folder(folder: str, passed: Collection[str]) -> dict:
    """Refuse a pipeline folder that would import code, was saved by a newer hfddpm or misses a part, each in one
    line naming the fix; return its model_index.json. Components in `passed` are not read; the UNet's weights are
    `check_weights`'s."""
    index_path = os.path.join(folder, "model_index.json")
    index = _read_json(
        index_path, f"{folder} holds no pipeline (no model_index.json); pass the folder save_pretrained wrote"
    )
    check_model_index(index, folder)
    for name, entry in index.items():
        if not name.startswith("_") and isinstance(entry, list) and entry[0] is not None:
            if os.path.isfile(os.path.join(folder, name, f"{entry[0]}.py")):
                raise ValueError(
                    f"{folder}/{name}/{entry[0]}.py would be imported as the code of {name}, and hfddpm never runs "
                    "code from a checkpoint: delete the file"
                )
    for name, config_name in _COMPONENT_CONFIGS.items():
        if name in passed:
            continue
        subfolder = os.path.join(folder, name)
        if not os.path.isdir(subfolder):
            raise FileNotFoundError(
                f"{folder} has no {name}/ folder; copy it from the source, re-save the pipeline with save_pretrained, "
                f"or pass {name}=... to from_pretrained"
            )
        _read_json(
            os.path.join(subfolder, config_name),
            f"{subfolder} has no {config_name}; copy it from the source or re-save the pipeline with save_pretrained",
        )
    return index


def check_model_index(index: dict, where: str) -> None:
    """Refuse a model_index.json that names code outside diffusers and hfddpm, or was written by a newer hfddpm."""
    class_name = index.get("_class_name")
    if isinstance(class_name, list):  # [file, class]: diffusers imports the pipeline from `file`.py
        raise ValueError(
            f"{where}/model_index.json names a custom pipeline file ({class_name[0]}.py); hfddpm never runs code "
            "from a checkpoint: load a folder saved by HFDDPMPipeline or a stock DDPM/DDIM pipeline"
        )
    if not isinstance(class_name, str):
        raise ValueError(f"{where}/model_index.json has no _class_name; re-save the pipeline with save_pretrained")
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        library = entry[0]
        if library.split(".")[0] not in _TRUSTED_LIBRARIES:
            raise ValueError(
                f"{where}/model_index.json loads {name} from {library!r}, which is not an installed library hfddpm "
                f"trusts; hfddpm never runs code from a checkpoint: use components from {list(_TRUSTED_LIBRARIES)}"
            )
    saved_by = index.get("_hfddpm_version")
    if saved_by is not None and Version(saved_by) > Version(__version__):
        raise ValueError(
            f"{where} was saved by hfddpm {saved_by}, newer than the installed hfddpm {__version__}; "
            "upgrade with `pip install -U hfddpm`"
        )


def check_weights(unet_folder: str, allow_pickle: bool) -> bool:
    """Refuse a UNet folder without weights, or with pickle weights only unless `allow_pickle`; with it, refuse a
    pickle that holds more than tensors, as `torch.load(weights_only=True)` judges (nothing in it is executed).
    Return whether the weights are (allowed) pickles."""
    files = sorted(os.listdir(unet_folder))
    if any(name.endswith(".safetensors") for name in files):
        return False
    pickles = [os.path.join(unet_folder, name) for name in files if name.endswith(PICKLE_SUFFIXES)]
    if not pickles:
        raise FileNotFoundError(
            f"{unet_folder} holds no weights (diffusion_pytorch_model.safetensors); copy them from the source or "
            "re-save the pipeline with save_pretrained"
        )
    if not allow_pickle:
        raise ValueError(
            f"{pickles[0]} is a pickle, and unpickling can run code, so it is not loaded: re-save the pipeline as "
            "safetensors (save_pretrained), or pass allow_pickle=True (--allow_pickle) if you trust the source"
        )
    for path in pickles:
        try:
            torch.load(path, map_location="meta", weights_only=True)
        except pickle.UnpicklingError as error:
            found = re.search(r"WeightsUnpickler error: (.*?)\.(?: |$)", str(error), re.MULTILINE)
            raise ValueError(
                f"{path} holds more than tensors ({found.group(1) if found else 'refused by the safe unpickler'}) "
                "and unpickling it could run code, so it is not loaded even with allow_pickle=True: get "
                "safetensors weights from a source you trust"
            ) from None
    return True


def _read_json(path: str, missing: str) -> dict:
    """The JSON object in `path`; a missing file raises FileNotFoundError(`missing`), an invalid one a ValueError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(missing)
    with open(path, encoding="utf-8") as file:
        try:
            value = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} is not valid JSON ({error}); copy it again from the source or re-save the pipeline"
            ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; copy it again from the source")
    return value
