"""What `HFDDPMPipeline.from_pretrained` adds to diffusers' loading: no code and no pickle from a checkpoint unless
the caller asks, and no weights that would sample wrong numbers.

diffusers does the loading (with `use_safetensors=True`, so pickle weights are refused). Before it runs, the folder
(or a Hub repository's model_index.json, fetched alone) is refused in one line naming the file and the fix when its
model_index.json names code — a custom pipeline, a component library other than diffusers and hfddpm, a `.py` file
where diffusers would import it — or was written by a newer hfddpm, or when a weights index would lead diffusers to
a pickle. The UNet (and a latent pipeline's autoencoder) is loaded first and refused when it lacks tensors of its
config (diffusers would leave them random) or holds others, or holds NaN or infinite weights; a stock DDPM or DDIM
scheduler loads as hfddpm's.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import diffusers
import torch
from huggingface_hub import hf_hub_download
from packaging.version import InvalidVersion, Version

from .. import __version__
from ..arguments import first_line
from ..records import NETWORKS, RESAVE, read_record
from ..schedulers import DDIMScheduler, DDPMScheduler

# Weight files that are pickles, which can run code when loaded: refused unless the user opts in, never published.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# The only libraries model_index.json may load components from: installed code, never code shipped in a checkpoint.
TRUSTED_LIBRARIES = ("diffusers", "hfddpm")
# `from_pretrained` options with which diffusers imports code named by the caller or the checkpoint, or loads
# another repository (a model card's base model) past these checks.
REMOTE_CODE_OPTIONS = ("custom_pipeline", "trust_remote_code", "load_connected_pipeline")
# `from_pretrained` options that say where and how to fetch a Hub repository (those `hf_hub_download` takes, and
# diffusers' own), and how to load a model's weights.
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "token", "revision")
DOWNLOAD_OPTIONS = (*HUB_OPTIONS, "proxies", "variant")
MODEL_OPTIONS = ("torch_dtype", "variant", "use_safetensors", "low_cpu_mem_usage")
# The components a pipeline folder cannot do without: a sampling pipeline's, or those of the class it names.
REQUIRED = ("unet", "scheduler")
REQUIRED_BY_CLASS = {"AutoencoderPipeline": ("vae",)}


def safe_components(
    source: str | os.PathLike, allow_pickle: bool, options: dict[str, Any], required: tuple[str, ...] = REQUIRED
) -> tuple[str, dict]:
    """The local folder of `source` (a Hub repository is downloaded) and its networks and scheduler, loaded and
    checked as the module docstring says; `required` are the components the pipeline class cannot do without;
    `options` are `from_pretrained`'s keyword arguments, those used popped."""
    if not isinstance(allow_pickle, bool):  # "no" would be truthy
        raise TypeError(f"allow_pickle must be True or False, got {allow_pickle!r}")
    for name in REMOTE_CODE_OPTIONS:
        if options.pop(name, None):
            raise ValueError(
                f"{name} would run code from outside diffusers and hfddpm, which hfddpm never does; drop it"
            )
    if options.get("use_safetensors") is False and not allow_pickle:
        raise ValueError(
            "use_safetensors=False loads pickle weights, which can run code; pass allow_pickle=True as well"
        )
    options.setdefault("use_safetensors", None if allow_pickle else True)
    folder = os.fspath(source)
    if not os.path.isdir(folder):
        download = {key: options[key] for key in DOWNLOAD_OPTIONS if key in options}
        check_model_index(fetch_model_index(folder, download), folder, required)
        # Pickle-only weights are fetched too (not unpickled), so that the check below names them.
        folder = diffusers.DiffusionPipeline.download(folder, **download, use_safetensors=None)
    index = read_record(
        os.path.join(folder, "model_index.json"), "holds no pipeline; pass the folder save_pretrained wrote"
    )
    check_model_index(index, folder, required)
    components = {}
    model_options = {key: options.pop(key) for key in MODEL_OPTIONS if key in options}
    for name in NETWORKS:
        if name not in options and (index.get(name) or [None])[0] is not None:
            components[name] = load_network(folder, name, index, allow_pickle, model_options)
    if "scheduler" in required and "scheduler" not in options:
        components["scheduler"] = load_scheduler(folder, index)
    return folder, components


def fetch_model_index(repo_id: str, download: dict) -> dict:
    """A Hub repository's model_index.json, fetched alone so that it is checked before diffusers' download reads
    it (which fetches a custom pipeline it names)."""
    try:
        path = hf_hub_download(
            repo_id, "model_index.json", **{key: download[key] for key in HUB_OPTIONS if key in download}
        )
    except Exception as error:  # an invalid id, no network, no such repository or file: all the same to the user
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder and its model_index.json could not be fetched from the Hub "
            f"({first_line(error)}); check the path or the repository id"
        ) from None
    return read_record(path, "has no model_index.json; check the repository id")


def required_components(index: dict) -> tuple[str, ...]:
    """The components the pipeline class that `index` (a model_index.json) names cannot do without."""
    return REQUIRED_BY_CLASS.get(index.get("_class_name"), REQUIRED)


def check_model_index(index: dict, where: str, required: tuple[str, ...] = REQUIRED) -> None:
    """Refuse a model_index.json without [library, class name] entries for the `required` components, or that names
    code outside diffusers and hfddpm (a custom pipeline, another library, a `.py` file in a local component folder),
    or that was written by a newer hfddpm."""
    path = f"{where}/model_index.json"
    if not isinstance(index.get("_class_name"), str):
        raise ValueError(
            f"{path} names a custom pipeline ({index.get('_class_name')!r}); hfddpm never runs code from a checkpoint"
        )
    components = {name: entry for name, entry in index.items() if not name.startswith("_") and isinstance(entry, list)}
    for name in required:
        entry = components.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
            raise ValueError(
                f"{path} has no {name} entry [library, class name]; re-save the pipeline with save_pretrained"
            )
    for name, (library, _) in components.items():
        if library is not None and library.split(".")[0] not in TRUSTED_LIBRARIES:
            raise ValueError(
                f"{path} loads {name} from {library!r}; hfddpm loads components from {list(TRUSTED_LIBRARIES)} only"
            )
        if os.path.isfile(os.path.join(where, name, f"{library}.py")):
            raise ValueError(
                f"{where}/{name}/{library}.py would be imported as the code of {name}, and hfddpm never runs code "
                "from a checkpoint: delete it"
            )
    saved_by = index.get("_hfddpm_version")
    try:
        newer = saved_by is not None and Version(str(saved_by)) > Version(__version__)
    except InvalidVersion:
        raise ValueError(f"{path} has _hfddpm_version {saved_by!r}, which is not a version; {RESAVE}") from None
    if newer:
        raise ValueError(
            f"{where} was saved by hfddpm {saved_by}, newer than the installed {__version__}; upgrade with `pip "
            "install -U hfddpm`"
        )


def weight_files_are_safe(unet_folder: str, allow_pickle: bool) -> None:
    """Refuse, unless `allow_pickle`, weights diffusers would read with `torch.load`: shards named by any weights
    index (every variant's, under either of diffusers' names) that are not safetensors files, and pickle weights
    without safetensors beside them."""
    if allow_pickle:
        return
    files = os.listdir(unet_folder)
    for index in (os.path.join(unet_folder, name) for name in files if ".index" in name and name.endswith(".json")):
        shards = read_record(index, "").get("weight_map", {}).values()
        if pickles := sorted(str(shard) for shard in shards if not str(shard).endswith(".safetensors")):
            raise ValueError(
                f"{index} names {pickles[0]}, which is not safetensors: loading it would unpickle it, and unpickling "
                "can run code; re-save the pipeline as safetensors, or pass allow_pickle=True (--allow_pickle) if you "
                "trust it"
            )
    if not any(name.endswith(".safetensors") for name in files) and (
        pickled := [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    ):
        raise ValueError(
            f"{unet_folder}/{pickled[0]} is a pickle, and unpickling can run code, so it is not loaded: re-save the "
            "pipeline as safetensors (save_pretrained), or pass allow_pickle=True (--allow_pickle) if you trust it"
        )


def load_network(folder: str, name: str, index: dict, allow_pickle: bool, options: dict[str, Any]) -> torch.nn.Module:
    """The pipeline's network `name` (its UNet, or a latent pipeline's autoencoder), refused in one line when its
    weights are damaged, miss tensors of its config, hold others, or hold NaN or infinities (black images)."""
    network_folder = os.path.join(folder, name)
    if not os.path.isdir(network_folder):  # diffusers would take the path for a Hub id
        raise FileNotFoundError(f"{folder} has no {name}/ folder; {RESAVE}")
    weight_files_are_safe(network_folder, allow_pickle)
    library, class_name = index[name]
    model_class = getattr(importlib.import_module(library), class_name)  # a trusted library (`check_model_index`)
    try:
        network, info = model_class.from_pretrained(network_folder, output_loading_info=True, **options)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ValueError(f"{network_folder} does not load ({first_line(error).split('. ')[0]}); {RESAVE}") from None
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if wrong := info.get(kind):
            what = {"missing_keys": "lacks", "unexpected_keys": "holds unknown", "mismatched_keys": "mismatches"}[kind]
            raise ValueError(
                f"{network_folder} {what} {len(wrong)} tensors of the network its config.json describes (first: "
                f"{wrong[0]}): the weights and the config belong to different models; {RESAVE}"
            )
    if bad := count_nonfinite(network):
        raise ValueError(
            f"{network_folder} holds {bad} non-finite weights (NaN or infinity), which would sample black images: "
            "load an earlier checkpoint of the run, or retrain"
        )
    return network


def load_autoencoder(source: str | os.PathLike) -> torch.nn.Module:
    """The `AutoencoderKL` of a folder or Hub repository: its `vae/` (an `AutoencoderPipeline`'s, a latent
    pipeline's, Stable Diffusion's), else the folder itself; checked as `load_network` checks a UNet."""
    folder = os.fspath(source)
    if not os.path.isdir(folder):
        for subfolder in ("vae", None):  # diffusers' download; safetensors only
            try:
                return diffusers.AutoencoderKL.from_pretrained(folder, subfolder=subfolder, use_safetensors=True)
            except (OSError, ValueError) as error:
                problem = first_line(error)
        raise FileNotFoundError(
            f"{folder!r} is not a local folder, and no AutoencoderKL could be loaded from it on the Hub ({problem}); "
            "check the path or the repository id"
        )
    parent, name = (folder, "vae") if os.path.isdir(os.path.join(folder, "vae")) else os.path.split(folder)
    return load_network(parent, name, {name: ["diffusers", "AutoencoderKL"]}, False, {})


def load_scheduler(folder: str, index: dict) -> Any:
    """The scheduler of model_index.json, hfddpm's subclass for a stock DDPM or DDIM scheduler; a value its
    constructor refuses is named with the file."""
    library, class_name = index["scheduler"]
    ours = {cls.__name__: cls for cls in (DDPMScheduler, DDIMScheduler)}
    scheduler_class = ours.get(class_name) or getattr(diffusers, class_name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise ValueError(
            f"{folder}/model_index.json names the scheduler {class_name!r}, which diffusers does not have; {RESAVE}"
        )
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    config = read_record(path, f"has no {os.path.basename(path)}; {RESAVE}")  # read here: no Hub lookup on a bad file
    try:
        return scheduler_class.from_config(config)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path} does not make a {class_name} ({first_line(error)}); {RESAVE}") from None


def count_nonfinite(model: torch.nn.Module) -> int:
    """How many NaN or infinite values the floating-point tensors of `model` hold."""
    return sum(
        int((~torch.isfinite(tensor)).sum())
        for tensor in model.state_dict().values()
        if tensor.is_floating_point() and tensor.device.type != "meta"
    )
