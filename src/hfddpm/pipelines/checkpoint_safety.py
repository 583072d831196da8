"""What `HFDDPMPipeline.from_pretrained` checks before it loads anything: no code from the checkpoint, no pickle,
no damaged or malformed file.

A checkpoint folder (or a Hub repository's model_index.json, fetched alone first) is refused, in one line naming
the file and the fix, when it names a custom pipeline or a component library other than diffusers and hfddpm, ships
a `.py` file where diffusers would import it, was saved by a newer hfddpm, misses a part, holds a config value of the
wrong kind or an absurd size, or has weights that are damaged, do not match the UNet's config, or would reach
`torch.load` (pickles alone, or shards named by a safetensors index) unless the caller allows pickles; they are then
read with `torch.load(weights_only=True)`, which refuses anything but tensors. Weights that load with NaN or
infinities are refused before anything samples from them.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import pickle
import re
from collections.abc import Collection
from typing import Any

import diffusers
import torch
from diffusers import UNet2DModel
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from packaging.version import InvalidVersion, Version
from safetensors import SafetensorError, safe_open

from .. import __version__
from ..models.unet_presets import check_unet_config, meta_unet
from ..schedulers import DDIMScheduler, DDPMScheduler

# Weight files that are pickles, which can run code when loaded: refused unless the user opts in, never published.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# diffusers' names of a model's safetensors weights and of their index when sharded.
_SAFETENSORS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
# The fix for a configuration file of the wrong form.
_RESAVE = "fix the file, or re-save the pipeline with save_pretrained"
# The fix for a damaged or mismatched weights file.
_RECOPY = "copy the unet/ folder again from the source, or re-save the pipeline with save_pretrained"

# The only libraries model_index.json may load components from: installed code, never code shipped in a checkpoint.
_TRUSTED_LIBRARIES = ("diffusers", "hfddpm")
# Each component loaded from its subfolder, and the config file the subfolder must hold.
_COMPONENT_CONFIGS = {"unet": "config.json", "scheduler": "scheduler_config.json"}
# model_index.json's keys that are HFDDPMPipeline's options, not components.
_PIPELINE_OPTIONS = ("default_num_inference_steps", "id2label")
# The schedulers that load as hfddpm's subclass when a checkpoint names the stock class.
_HFDDPM_SCHEDULERS = {cls.__name__: cls for cls in (DDPMScheduler, DDIMScheduler)}


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
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder and its model_index.json could not be fetched from the Hub "
            f"({_first_line(error)}); check the path or the repository id"
        ) from None
    return _read_json(path, f"{repo_id} has no model_index.json; check the repository id")


def check_checkpoint_folder(folder: str, passed: Collection[str]) -> dict:
    """Refuse a pipeline folder that would import code, was saved by a newer hfddpm, misses a part or has a
    malformed model_index.json or scheduler config, each in one line naming the fix; return its model_index.json.
    Components in `passed` are not read; the UNet's config and weights are `check_unet_folder`'s."""
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
        entry = index.get(name)
        if not (isinstance(entry, list) and all(isinstance(part, str) for part in entry)):
            raise ValueError(
                f"{index_path} has no {name} entry ([library, class name]); re-save the pipeline with "
                f"save_pretrained, or pass {name}=... to from_pretrained"
            )
        subfolder = os.path.join(folder, name)
        if not os.path.isdir(subfolder):
            raise FileNotFoundError(
                f"{folder} has no {name}/ folder; copy it from the source, re-save the pipeline with save_pretrained, "
                f"or pass {name}=... to from_pretrained"
            )
        config = _read_json(
            os.path.join(subfolder, config_name),
            f"{subfolder} has no {config_name}; copy it from the source or re-save the pipeline with save_pretrained",
        )
        if name == "scheduler" and (scheduler_class := scheduler_class_of(index)) is not None:
            check_scheduler_config(config, os.path.join(subfolder, config_name), scheduler_class)
    return index


def scheduler_class_of(index: dict) -> type | None:
    """The class that loads model_index.json's scheduler: hfddpm's subclass for a stock (or hfddpm) DDPM or DDIM
    scheduler, the stock class for another diffusers scheduler, None for anything else."""
    library, class_name = (index.get("scheduler") or [None, None])[:2]
    if library in ("diffusers", *(cls.__module__ for cls in _HFDDPM_SCHEDULERS.values())):
        if class_name in _HFDDPM_SCHEDULERS:
            return _HFDDPM_SCHEDULERS[class_name]
        stock = getattr(diffusers, str(class_name), None)
        return stock if isinstance(stock, type) and issubclass(stock, diffusers.SchedulerMixin) else None
    return None


def check_model_index(index: dict, where: str) -> None:
    """Refuse a model_index.json that names code outside diffusers and hfddpm, was written by a newer hfddpm, or
    holds a value of the wrong kind (each in one line naming the key)."""
    path = f"{where}/model_index.json"
    class_name = index.get("_class_name")
    if isinstance(class_name, list):  # [file, class]: diffusers imports the pipeline from `file`.py
        raise ValueError(
            f"{path} names a custom pipeline file ({class_name[0]}.py); hfddpm never runs code "
            "from a checkpoint: load a folder saved by HFDDPMPipeline or a stock DDPM/DDIM pipeline"
        )
    if not isinstance(class_name, str):
        raise ValueError(f"{path} has no _class_name; re-save the pipeline with save_pretrained")
    for name, entry in index.items():
        if name.startswith("_") or name in _PIPELINE_OPTIONS or not isinstance(entry, list):
            continue
        if len(entry) != 2 or not all(part is None or isinstance(part, str) for part in entry):
            raise ValueError(f"{path} has {name} {entry!r}, not [library, class name]; {_RESAVE}")
        if entry[0] is not None and entry[0].split(".")[0] not in _TRUSTED_LIBRARIES:
            raise ValueError(
                f"{path} loads {name} from {entry[0]!r}, which is not an installed library hfddpm "
                f"trusts; hfddpm never runs code from a checkpoint: use components from {list(_TRUSTED_LIBRARIES)}"
            )
    _check_index_values(index, path)


def _check_index_values(index: dict, path: str) -> None:
    """hfddpm's own model_index.json keys: a version no newer than the installed hfddpm, a positive step count, a
    dict of class names."""
    saved_by = index.get("_hfddpm_version")
    try:
        newer = saved_by is not None and Version(str(saved_by)) > Version(__version__)
    except InvalidVersion:
        raise ValueError(f"{path} has _hfddpm_version {saved_by!r}, which is not a version; {_RESAVE}") from None
    if newer:
        raise ValueError(
            f"{path.rsplit('/', 1)[0]} was saved by hfddpm {saved_by}, newer than the installed hfddpm {__version__}; "
            "upgrade with `pip install -U hfddpm`"
        )
    steps = index.get("default_num_inference_steps")
    if steps is not None and (type(steps) is not int or steps < 1):
        raise ValueError(
            f"{path} has default_num_inference_steps {steps!r}, not a positive integer or null; {_RESAVE}"
        )
    labels = index.get("id2label")
    if labels is not None and not isinstance(labels, dict):
        raise ValueError(f"{path} has id2label {labels!r}, not an object {{id: class name}}; {_RESAVE}")


def check_scheduler_config(config: dict, path: str, scheduler_class: type) -> None:
    """Refuse a scheduler config whose options have the wrong kind for `scheduler_class` (a string or a float
    where its default is an integer, a bool where it is a count, a list where it is a number, non-finite numbers):
    diffusers would pass them on and fail deep inside, or not at all."""
    parameters = inspect.signature(scheduler_class.__init__).parameters
    for key, value in config.items():
        if key.startswith("_") or key not in parameters:
            continue
        default = parameters[key].default
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = type(value) is int, "an integer"
        elif isinstance(default, float):
            ok = type(value) in (int, float) and math.isfinite(value)
            kind = "a finite number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a name (a string)"
        elif key == "trained_betas" and value is not None:
            ok = isinstance(value, list) and all(type(v) in (int, float) and math.isfinite(v) for v in value)
            kind = "a list of finite numbers or null"
        else:
            continue
        if not ok:
            raise ValueError(f"{key} in {path} must be {kind}, got {value!r} ({type(value).__name__}); {_RESAVE}")


def load_scheduler(folder: str, scheduler_class: type) -> Any:
    """`scheduler_class` from `folder`/scheduler; a value its constructor refuses is named with the file."""
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    try:
        return scheduler_class.from_pretrained(folder, subfolder="scheduler")
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(
            f"{path} does not make a {scheduler_class.__name__} ({_first_line(error)}); {_RESAVE}"
        ) from None


def check_unet_folder(unet_folder: str, allow_pickle: bool, variant: str | None, unet_class: str) -> list[str]:
    """`check_weights`, then for a UNet2DModel its config.json (`check_unet_config`) and the shapes of the tensors
    in its weights (`check_weight_shapes`), before anything is allocated; returns the weight files."""
    files = check_weights(unet_folder, allow_pickle, variant)
    if unet_class == "UNet2DModel":
        config_path = os.path.join(unet_folder, "config.json")
        parameters = inspect.signature(UNet2DModel.__init__).parameters
        options = {key: value for key, value in _read_json(config_path, "").items() if key in parameters}
        try:
            config = check_unet_config(options, config_path)
        except (ValueError, TypeError) as error:
            if "; " in str(error):  # it names its fix
                raise
            raise type(error)(f"{error}; {_RESAVE}") from None
        if len(files) == 1 or all(name.endswith(".safetensors") for name in files):  # not sharded pickles
            check_weight_shapes(files, config, config_path)
    return files


def check_weights(unet_folder: str, allow_pickle: bool, variant: str | None = None) -> list[str]:
    """The weight files diffusers will read for the UNet in `unet_folder` (safetensors, else allowed pickles), each
    checked: a safetensors index naming any other file is refused unless `allow_pickle` (diffusers would read it with
    `torch.load`), and so are pickle weights alone; with `allow_pickle`, a pickle holding more than tensors, as
    `torch.load(weights_only=True)` judges, is refused (nothing in it is executed)."""
    files = sorted(os.listdir(unet_folder))
    for name in files:
        if ".index" in name and name.endswith(".json"):
            _check_index_shards(os.path.join(unet_folder, name), allow_pickle)
    index = safetensors_index(unet_folder, variant)
    if os.path.isfile(index):
        shards = sorted(set(_read_json(index, "")["weight_map"].values()))
        return [os.path.join(unet_folder, shard) for shard in shards]
    single = _with_variant(_SAFETENSORS_WEIGHTS, variant)
    if single in files:
        return [os.path.join(unet_folder, single)]
    if others := [name for name in files if name.endswith(".safetensors")]:
        raise FileNotFoundError(
            f"{unet_folder} has no {single} but holds {others}: pass the variant they were saved as (variant='fp16' "
            "for diffusion_pytorch_model.fp16.safetensors), or re-save the pipeline with save_pretrained"
        )
    pickles = [os.path.join(unet_folder, name) for name in files if name.endswith(PICKLE_SUFFIXES)]
    if not pickles:
        raise FileNotFoundError(
            f"{unet_folder} holds no weights ({single}); copy them from the source or re-save the pipeline with "
            "save_pretrained"
        )
    if not allow_pickle:
        raise ValueError(
            f"{pickles[0]} is a pickle, and unpickling can run code, so it is not loaded: re-save the pipeline as "
            "safetensors (save_pretrained), or pass allow_pickle=True (--allow_pickle) if you trust the source"
        )
    for path in pickles:
        _load_tensors_only(path)
    return pickles


def _check_index_shards(index: str, allow_pickle: bool) -> None:
    """Refuse a weights index whose shards are not plain safetensors files in its folder (unless `allow_pickle`,
    when they are read as tensors only)."""
    weight_map = _read_json(index, "").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
        raise ValueError(
            f"{index} has no weight_map of tensor names to files; copy it again from the source or re-save the "
            "pipeline with save_pretrained"
        )
    for shard in sorted(set(weight_map.values())):
        if shard.endswith(".safetensors"):
            continue
        path = os.path.join(os.path.dirname(index), shard)
        if not allow_pickle:
            raise ValueError(
                f"{index} maps tensors to {shard}, which is not safetensors: diffusers would unpickle it, and "
                "unpickling can run code, so it is not loaded: re-save the pipeline as safetensors (save_pretrained), "
                "or pass allow_pickle=True (--allow_pickle) if you trust the source"
            )
        if os.path.isfile(path):
            _load_tensors_only(path)


def _load_tensors_only(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a pickle, on the meta device, read by the safe unpickler; one line when it holds more."""
    try:
        return torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error: (.*?)\.(?: |$)", str(error), re.MULTILINE)
        raise ValueError(
            f"{path} holds more than tensors ({found.group(1) if found else 'refused by the safe unpickler'}) "
            "and unpickling it could run code, so it is not loaded even with allow_pickle=True: get "
            "safetensors weights from a source you trust"
        ) from None
    except (OSError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path} is damaged ({_first_line(error)}); {_RECOPY}") from None


def check_weight_shapes(files: list[str], unet_config: dict, config_path: str) -> None:
    """Refuse weight files that are damaged or do not hold exactly the tensors, of the right shapes, of the
    UNet2DModel `unet_config` describes (diffusers would leave missing ones random with a warning)."""
    unet = meta_unet(unet_config, config_path)
    expected = {key: tuple(value.shape) for key, value in unet.state_dict().items()}
    loaded = {}
    for path in files:
        loaded |= _tensor_shapes(path)
    if len(files) == 1:  # as diffusers, which renames old attention blocks' tensors in unsharded files only
        unet._fix_state_dict_keys_on_load(loaded)
    where = files[0] if len(files) == 1 else f"{os.path.dirname(files[0])} ({len(files)} shards)"
    model = f"the UNet that {config_path} describes"
    if missing := sorted(expected.keys() - loaded.keys()):
        raise ValueError(
            f"{where} lacks {len(missing)} of the {len(expected)} tensors of {model} (first: {missing[0]}), "
            f"which would be left random; {_RECOPY}"
        )
    if wrong := sorted(key for key in expected if loaded[key] != expected[key]):
        raise ValueError(
            f"{where} holds {wrong[0]} of shape {list(loaded[wrong[0]])} where {model} has {list(expected[wrong[0]])} "
            f"({len(wrong)} tensors differ): the weights and the config belong to different models; {_RECOPY}"
        )
    if extra := sorted(loaded.keys() - expected.keys()):
        raise ValueError(
            f"{where} holds {len(extra)} tensors that {model} does not have (first: {extra[0]}): the weights and "
            f"the config belong to different models; {_RECOPY}"
        )


def _tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a weight file, read from its header (safetensors) or by the safe unpickler (pickles)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; {_RECOPY}")
    if not path.endswith(".safetensors"):
        return {key: tuple(value.shape) for key, value in _load_tensors_only(path).items()}
    try:
        with safe_open(path, framework="pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is damaged ({_first_line(error)}): not a complete safetensors file; {_RECOPY}"
        ) from None


def nonfinite_weights(model: torch.nn.Module) -> dict[str, int]:
    """How many NaN or infinite values each floating-point tensor of `model` holds, for the tensors that hold any."""
    counts = {
        name: int((~torch.isfinite(tensor)).sum())
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and tensor.device.type != "meta"
    }
    return {name: count for name, count in counts.items() if count}


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Refuse a model whose loaded weights hold NaN or infinities, which would sample black images."""
    if bad := nonfinite_weights(model):
        raise ValueError(
            f"{source} holds {sum(bad.values())} non-finite weights (NaN or infinity) in {len(bad)} tensors "
            f"(first: {next(iter(bad))}), which would sample black images: load an earlier checkpoint of the run, or "
            "retrain"
        )


def safetensors_index(unet_folder: str, variant: str | None) -> str:
    """The path of the safetensors index diffusers reads first (it may not exist): its shards are what it loads."""
    return os.path.join(unet_folder, _with_variant(_SAFETENSORS_INDEX, variant))


def _with_variant(name: str, variant: str | None) -> str:
    """A weights file name with diffusers' variant inserted before its last extension."""
    if not variant:
        return name
    stem, extension = name.rsplit(".", 1)
    return f"{stem}.{variant}.{extension}"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


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
