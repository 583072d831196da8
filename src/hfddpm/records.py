"""The JSON records of a run folder and of a pipeline, read through one reader and tied to the weights they describe.

`read_record` reads every record — a run's `training_args.json`, `training_info.json`, `evaluation.json`,
`distillation.json`, a pipeline's `model_index.json` and component configs — and checks it against the shape
`SHAPES` gives its file name: a value of the wrong kind or a missing key is a one-line `RecordError` naming the file
and the key, before anything reads it. A key whose kind admits None may be absent, and so may a nested object marked
`MayBeAbsent` (a dict shape, whose "*" stands for every key). A shape lists the keys some reader uses; others are
never read.

Numbers measured on weights (an evaluation) carry `weights_fingerprint` of those weights, so that a reader can tell
them from numbers of earlier weights in the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .arguments import is_integer, is_number

Number = float  # an int or a float, never a bool


class MayBeAbsent(dict):
    """The shape of a nested object that may be absent or null (other nested objects must be there)."""


TRAINING_ARGS = {
    "output_dir": str,
    "dataset_name": str | None,
    "dataset_config_name": str | None,
    "train_data_dir": str | None,
    "split": str,
    "image_column": str | None,
    "label_column": str | None,
    "class_dropout_prob": Number | None,
    "hub_model_id": str | None,
    "loss_type": str | None,
    "snr_gamma": Number | None,
    "model_preset": str | None,
    "train_batch_size": int,
    "gradient_accumulation_steps": int,
    "learning_rate": Number,
    "lr_scheduler": str,
    "lr_warmup_steps": int,
    "use_ema": bool,
    "ema_max_decay": Number,
    "mixed_precision": str | None,
    "max_train_steps": int | None,
    "num_sample_images": int,
    "num_inference_steps": int,
    "seed": int,
}
SHAPES: dict[str, dict] = {
    "training_args.json": TRAINING_ARGS,
    "training_info.json": {
        "device": str,
        "num_processes": int,
        "mixed_precision": str | None,
        "global_step": int,
        "wall_time_seconds": Number,
        "final_loss": Number | None,
        "parameters": str,
        "versions": {"*": str},
    },
    "evaluation.json": {
        "checkpoint": str,
        "dataset": str,
        "weights": str | None,
        "metrics": {"*": Number},
        "details": {
            "bits_per_dim": MayBeAbsent(
                {
                    "split": str,
                    "standard_error": Number,
                    "num_images": int,
                    "num_timesteps": int,
                    "reverse_variance": str,
                }
            ),
            "samples": MayBeAbsent({"num_samples": int, "source": str, "reference": str}),
        },
    },
    "distillation.json": {
        "method": str,
        "loss": str,
        "teacher": str,
        "teacher_weights": str | None,
        "steps": int,
        "distilled_from": str,
        "round": int | None,
        "rounds": int | None,
        "teacher_steps": int | None,
        "earlier_rounds_seconds": Number | None,
        "num_ddim_timesteps": int | None,
        "target_ema_decay": Number | None,
    },
    "model_index.json": {
        "id2label": MayBeAbsent({"*": str}),
        "default_num_inference_steps": int | None,
    },
    "config.json": {"sample_size": int | list | None, "in_channels": int | None, "num_class_embeds": int | None},
    "scheduler_config.json": {
        "num_train_timesteps": int | None,
        "beta_schedule": str | None,
        "prediction_type": str | None,
        "reverse_variance": str | None,
    },
}


class RecordError(ValueError):
    """A record holds what its reader cannot use; the message names the file, the key and the fix."""


def read_record(path: str | os.PathLike, missing: str | None = None) -> dict:
    """The JSON object in `path`, checked against `SHAPES[name]`: {} when the file is absent, or with `missing`
    FileNotFoundError("<folder> `missing`"); a `RecordError` when it is not JSON, not an object, or off its shape."""
    path = Path(path)
    if not path.is_file():
        if missing is None:
            return {}
        raise FileNotFoundError(f"{path.parent} {missing}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"is not valid JSON ({error})"
    else:
        problem = _problem(record, SHAPES.get(path.name, {}))
    if problem:
        fix = FIXES.get(path.name, "fix the file, or remove it")
        raise RecordError(f"{path}: {problem}; {fix}") from None
    return record


def write_record(path: str | os.PathLike, record: Mapping) -> None:
    """Write `record` as indented JSON, atomically."""
    from .durable import write_text

    write_text(path, json.dumps(record, indent=2) + "\n")


def weights_fingerprint(state_dict: Mapping[str, Any]) -> str:
    """A short SHA-256 of a state dict's names, dtypes, shapes and bytes: equal for the same weights, however saved."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# A pipeline's networks, whose weights its numbers depend on.
NETWORKS = ("unet", "vae")


def networks_fingerprint(states: Mapping[str, Mapping[str, Any]]) -> str:
    """`weights_fingerprint` of a pipeline's networks, given as {component name: state dict}: one network's own
    fingerprint when there is one (a UNet, or an autoencoder alone), else that of their tensors named by component."""
    if len(states) == 1:
        return weights_fingerprint(next(iter(states.values())))
    return weights_fingerprint(
        {f"{name}.{key}": value for name, state in states.items() for key, value in state.items()}
    )


def loaded_fingerprint(pipeline: Any) -> str:
    """`networks_fingerprint` of a loaded pipeline's networks."""
    components = {name: getattr(pipeline, name, None) for name in NETWORKS}
    return networks_fingerprint({name: model.state_dict() for name, model in components.items() if model is not None})


def pipeline_fingerprint(folder: str | os.PathLike) -> str | None:
    """`networks_fingerprint` of the networks a pipeline folder holds (their safetensors files), None without any."""
    from safetensors.torch import load_file

    states = {
        name: {key: value for file in files for key, value in load_file(file).items()}
        for name in NETWORKS
        if (files := sorted(Path(folder, name).glob("*.safetensors")))
    }
    return networks_fingerprint(states) if states else None


# How to repair a record: a pipeline's files are saved again; a run's own records may go (the card then omits them).
RESAVE = "copy it again from the source, or re-save the pipeline with save_pretrained"
FIXES = {"model_index.json": RESAVE, "config.json": RESAVE, "scheduler_config.json": RESAVE}


def _problem(value: Any, shape: Any, where: str = "") -> str | None:
    """What is wrong with `value` against `shape` ("key 'seed' is "zero", not an integer"), or None. A dict shape is
    an object whose keys are checked (with "*", every key against it)."""
    if not isinstance(shape, dict):
        return None if _admits(value, shape) else f"key {where[:-1]!r} is {json.dumps(value)[:40]}, not {_name(shape)}"
    if not isinstance(value, dict):
        return f"{f'key {where[:-1]!r}' if where else 'it'} is {json.dumps(value)[:40]}, not an object"
    for key in value if "*" in shape else shape:
        part = shape.get(key, shape.get("*"))
        if value.get(key) is None and (
            isinstance(part, MayBeAbsent) or not isinstance(part, dict) and _admits(None, part)
        ):
            continue
        if key not in value:
            return f"key {where + key!r} is missing"
        if problem := _problem(value[key], part, f"{where}{key}."):
            return problem
    return None


def _admits(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_admits(value, part) for part in typing.get_args(kind))
    if kind in (Number, int):
        return (is_number if kind is Number else is_integer)(value)
    return value is None if kind is type(None) else isinstance(value, kind)


def _name(kind: Any) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_name(part) for part in typing.get_args(kind))
    names = {Number: "a number", int: "an integer", str: "a string", bool: "true or false", list: "a list"}
    return names.get(kind, "null")
