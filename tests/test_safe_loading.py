"""Loading a checkpoint runs no code from it: pickle weights need an explicit opt-in and even then are read as
tensors only, custom pipeline or component code is refused before it is imported, and an incomplete or too-new
folder is refused in one line that names the fix."""

import ast
import json
import pathlib
import pickle
import shutil

import diffusers
import numpy as np
import pytest
import safetensors.torch
import torch

import hfddpm
from hfddpm import DDPMScheduler, HFDDPMPipeline
from hfddpm.cli import main

from .conftest import tiny_unet
from .test_hub import _fill_hub_cache

SRC = pathlib.Path(hfddpm.__file__).parent


class _WritesMarker:
    """Unpickling this object opens (creates) `path`: the stand-in for a pickle that runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _one_line_error(error_type, load) -> str:
    with pytest.raises(error_type) as info:
        load()
    message = str(info.value)
    assert "\n" not in message
    return message


def _images(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=3, output_type="np").images


@pytest.fixture
def folder(tmp_path):
    """An hfddpm pipeline folder as save_pretrained writes it (safetensors weights)."""
    HFDDPMPipeline(unet=tiny_unet(channels=1), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipeline")
    return tmp_path / "pipeline"


def _rewrite_index(folder, **changes) -> None:
    path = folder / "model_index.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_pickle_only_weights_load_only_with_allow_pickle_and_only_as_tensors(tmp_path, monkeypatch):
    unet = tiny_unet(channels=1)
    stock = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    stock.save_pretrained(tmp_path / "safetensors")
    stock.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "pickle" / "unet").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.bin",
    ]

    message = _one_line_error(ValueError, lambda: HFDDPMPipeline.from_pretrained(tmp_path / "pickle"))
    assert f"{tmp_path / 'pickle' / 'unet' / 'diffusion_pytorch_model.bin'} is a pickle" in message
    assert "unpickling can run code" in message and "safetensors" in message and "allow_pickle=True" in message

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or real_load(*args, **kwargs))
    pipe = HFDDPMPipeline.from_pretrained(tmp_path / "pickle", allow_pickle=True)
    assert loads and all(kwargs.get("weights_only") is True for kwargs in loads)  # ours and diffusers'
    assert type(pipe.scheduler) is DDPMScheduler
    np.testing.assert_array_equal(_images(pipe), _images(HFDDPMPipeline.from_pretrained(tmp_path / "safetensors")))


@pytest.mark.parametrize("allow_pickle", [False, True])
@pytest.mark.parametrize("serialization", ["torch.save", "pickle"])
def test_a_malicious_pickle_is_never_unpickled(folder, tmp_path, allow_pickle, serialization):
    marker = tmp_path / "code-ran"
    weights = folder / "unet" / "diffusion_pytorch_model.bin"
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    payload = {"conv_in.weight": _WritesMarker(marker)}
    if serialization == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload, protocol=2))

    message = _one_line_error(ValueError, lambda: HFDDPMPipeline.from_pretrained(folder, allow_pickle=allow_pickle))
    assert str(weights) in message and "run code" in message
    if allow_pickle:
        assert "holds more than tensors" in message and "not loaded even with allow_pickle=True" in message
    assert not marker.exists()
    # The payload is real: a full unpickling runs it.
    torch.load(weights, weights_only=False) if serialization == "torch.save" else pickle.loads(weights.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("option", [{"custom_pipeline": "my_pipeline"}, {"trust_remote_code": True}])
def test_remote_code_options_are_refused(folder, option):
    (name,) = option
    message = _one_line_error(ValueError, lambda: HFDDPMPipeline.from_pretrained(folder, **option))
    assert message.startswith(f"{name}=") and f"drop {name}" in message


@pytest.mark.parametrize(
    "where", ["component library", "component library in unet/", "pipeline class", "diffusers.py"]
)
def test_code_named_by_a_checkpoint_is_refused_before_it_is_imported(folder, tmp_path, where):
    marker = tmp_path / "code-ran"
    code = f"open({str(marker)!r}, 'w').write('imported')\nfrom diffusers import UNet2DModel as MyUNet\n"
    if where == "component library":
        (folder / "my_unet.py").write_text(code)
        _rewrite_index(folder, unet=["my_unet", "MyUNet"])
        expected = "loads unet from 'my_unet'"
    elif where == "component library in unet/":
        (folder / "unet" / "my_unet.py").write_text(code)
        _rewrite_index(folder, unet=["my_unet", "MyUNet"])
        expected = "loads unet from 'my_unet'"
    elif where == "pipeline class":
        (folder / "my_pipeline.py").write_text(code.replace("UNet2DModel as MyUNet", "DDPMPipeline as MyPipeline"))
        _rewrite_index(folder, _class_name=["my_pipeline", "MyPipeline"])
        expected = "names a custom pipeline file (my_pipeline.py)"
    else:  # a file named after a trusted library, which diffusers would import from the component folder
        (folder / "unet" / "diffusers.py").write_text(code)
        expected = "unet/diffusers.py would be imported"

    message = _one_line_error(ValueError, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert expected in message and "never runs code from a checkpoint" in message
    assert not marker.exists()


def test_a_hub_repository_gets_the_same_checks_before_its_download(folder, tmp_path):
    marker = tmp_path / "code-ran"
    (folder / "my_pipeline.py").write_text(f"open({str(marker)!r}, 'w')\n")
    _rewrite_index(folder, _class_name=["my_pipeline", "MyPipeline"])
    _fill_hub_cache(tmp_path / "cache", "user/custom", folder)
    message = _one_line_error(
        ValueError,
        lambda: HFDDPMPipeline.from_pretrained("user/custom", cache_dir=tmp_path / "cache", local_files_only=True),
    )
    assert message.startswith("user/custom/model_index.json names a custom pipeline file (my_pipeline.py)")
    assert not marker.exists()

    _rewrite_index(folder, _class_name="DDPMPipeline")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(tiny_unet(channels=1).state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    _fill_hub_cache(tmp_path / "cache", "user/pickled", folder)
    load = lambda **kwargs: HFDDPMPipeline.from_pretrained(  # noqa: E731
        "user/pickled", cache_dir=tmp_path / "cache", local_files_only=True, **kwargs
    )
    assert "diffusion_pytorch_model.bin is a pickle" in _one_line_error(ValueError, load)
    assert load(allow_pickle=True).unet.config.in_channels == 1


def _remove(path):
    return shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize(
    "damage, error_type, expected",
    [
        (lambda f: _remove(f / "model_index.json"), FileNotFoundError, "holds no pipeline (no model_index.json)"),
        (lambda f: (f / "model_index.json").write_text("{"), ValueError, "model_index.json is not valid JSON"),
        (lambda f: _remove(f / "unet"), FileNotFoundError, "has no unet/ folder"),
        (lambda f: _remove(f / "scheduler"), FileNotFoundError, "has no scheduler/ folder"),
        (
            lambda f: _remove(f / "unet" / "diffusion_pytorch_model.safetensors"),
            FileNotFoundError,
            "unet holds no weights (diffusion_pytorch_model.safetensors)",
        ),
        (lambda f: _remove(f / "unet" / "config.json"), FileNotFoundError, "unet has no config.json"),
        (lambda f: (f / "unet" / "config.json").write_text("{'a': 1}"), ValueError, "config.json is not valid JSON"),
        (
            lambda f: (f / "scheduler" / "scheduler_config.json").write_text("[]"),
            ValueError,
            "scheduler_config.json holds a JSON list, not an object",
        ),
    ],
    ids=[
        "no model_index.json",
        "model_index.json not JSON",
        "no unet/",
        "no scheduler/",
        "unet/ without weights",
        "unet/ without config",
        "unet/config.json not JSON",
        "scheduler config not an object",
    ],
)
def test_an_incomplete_checkpoint_is_refused_in_one_line(folder, damage, error_type, expected):
    damage(folder)
    message = _one_line_error(error_type, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert expected in message
    assert any(fix in message for fix in ("save_pretrained", "copy it again from the source"))


def test_a_checkpoint_from_a_newer_hfddpm_is_refused(folder):
    _rewrite_index(folder, _hfddpm_version="99.0.0")
    message = _one_line_error(ValueError, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert f"saved by hfddpm 99.0.0, newer than the installed hfddpm {hfddpm.__version__}" in message
    assert message.endswith("upgrade with `pip install -U hfddpm`")
    _rewrite_index(folder, _hfddpm_version="0.0.1")
    assert type(HFDDPMPipeline.from_pretrained(folder).scheduler) is DDPMScheduler  # older versions load


def test_every_torch_load_in_the_package_reads_tensors_only():
    calls = [
        (path.name, node.lineno, node)
        for path in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"
    ]
    assert calls  # the scan sees them
    for name, line, call in calls:
        weights_only = [k.value for k in call.keywords if k.arg == "weights_only"]
        assert [ast.unparse(v) for v in weights_only] == ["True"], f"{name}:{line}"


def test_command_line_refuses_pickle_weights_in_one_line_unless_allowed(folder, tmp_path, capsys):
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(tiny_unet(channels=1).state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    command = ["sample", str(folder), "--num_images", "1", "--steps", "1", "--output", str(tmp_path / "grid.png")]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("hfddpm sample: error: ")
    assert "diffusion_pytorch_model.bin is a pickle" in error and "--allow_pickle" in error
    assert main([*command, "--allow_pickle", "--device", "cpu"]) == 0
    assert (tmp_path / "grid.png").is_file()


def _weights(folder):
    return folder / "unet" / "diffusion_pytorch_model.safetensors"


def _state(folder) -> dict:
    return safetensors.torch.load_file(_weights(folder))


def _index(folder, name, shard, state):
    (folder / "unet" / name).write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(state, shard)}))


def _pickle_shard_behind_an_index(folder, marker, index_name="diffusion_pytorch_model.safetensors.index.json"):
    """A safetensors index mapping every tensor to a pickle that runs code (the safetensors file stays)."""
    state = _state(folder)
    torch.save({**state, "conv_in.weight": _WritesMarker(marker)}, folder / "unet" / "weights.bin")
    _index(folder, index_name, "weights.bin", state)
    return "weights.bin"


def _pickle_with_another_suffix(folder, marker):
    state = _state(folder)
    torch.save({**state, "conv_in.weight": _WritesMarker(marker)}, folder / "unet" / "weights.dat")
    _index(folder, "diffusion_pytorch_model.safetensors.index.json", "weights.dat", state)
    return "weights.dat"


def _sharded_pickles(folder, marker):
    state = _state(folder)
    _weights(folder).unlink()
    torch.save({**state, "conv_in.weight": _WritesMarker(marker)}, folder / "unet" / "model-00001-of-00001.bin")
    _index(folder, "diffusion_pytorch_model.bin.index.json", "model-00001-of-00001.bin", state)
    return "model-00001-of-00001.bin"


# (id, damage(folder, marker) -> the pickle's name, from_pretrained options)
PICKLE_PATHS = [
    ("safetensors index naming a .bin shard", _pickle_shard_behind_an_index, {}),
    ("safetensors index naming a shard of another suffix", _pickle_with_another_suffix, {}),
    (
        "variant index naming a .bin shard",
        lambda f, m: _pickle_shard_behind_an_index(f, m, "diffusion_pytorch_model.safetensors.index.fp16.json"),
        {"variant": "fp16"},
    ),
    (
        "legacy variant index naming a .bin shard",
        lambda f, m: _pickle_shard_behind_an_index(f, m, "diffusion_pytorch_model.fp16.safetensors.index.json"),
        {"variant": "fp16"},
    ),
    ("sharded .bin index", _sharded_pickles, {}),
]


@pytest.mark.parametrize("allow_pickle", [False, True])
@pytest.mark.parametrize("damage, options", [c[1:] for c in PICKLE_PATHS], ids=[c[0] for c in PICKLE_PATHS])
def test_every_path_to_a_pickle_is_closed_without_allow_pickle(folder, tmp_path, damage, options, allow_pickle):
    marker = tmp_path / "code-ran"
    shard = damage(folder, marker)
    load = lambda: HFDDPMPipeline.from_pretrained(folder, allow_pickle=allow_pickle, **options)  # noqa: E731
    message = _one_line_error(ValueError, load)
    if allow_pickle:  # read by the safe unpickler only, which refuses the payload
        assert message.startswith(f"{folder / 'unet' / shard} holds more than tensors")
    else:
        assert shard in message and "unpickling can run code" in message and "allow_pickle=True" in message
    assert not marker.exists()


def test_a_safetensors_index_naming_a_pickle_of_tensors_loads_only_with_allow_pickle(folder):
    state = _state(folder)
    torch.save(state, folder / "unet" / "weights.bin")
    _weights(folder).unlink()
    _index(folder, "diffusion_pytorch_model.safetensors.index.json", "weights.bin", state)
    message = _one_line_error(ValueError, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert message.startswith(f"{folder / 'unet' / 'diffusion_pytorch_model.safetensors.index.json'} maps tensors to ")
    pipe = HFDDPMPipeline.from_pretrained(folder, allow_pickle=True)
    torch.testing.assert_close(pipe.unet.state_dict(), state, rtol=0, atol=0)


@pytest.mark.parametrize("option", [{"load_connected_pipeline": True}, {"allow_pickle": "yes"}])
def test_options_that_bypass_the_checks_are_refused(folder, option):
    (name,) = option
    error_type = TypeError if name == "allow_pickle" else ValueError
    message = _one_line_error(error_type, lambda: HFDDPMPipeline.from_pretrained(folder, **option))
    assert message.startswith(f"{name}=") or message == "allow_pickle must be True or False, got 'yes'"


def _save_weights(folder, state):
    safetensors.torch.save_file(state, _weights(folder))


def _without(state, key):
    return {k: v for k, v in state.items() if k != key}


# (id, damage(folder, state), the line's start after the weights file, its fix or reason)
DAMAGED_WEIGHTS = [
    (
        "truncated",
        lambda f, s: _weights(f).write_bytes(_weights(f).read_bytes()[:-100]),
        " is damaged (",
        "not fully covered",
    ),
    ("empty", lambda f, s: _weights(f).write_bytes(b""), " is damaged (", "header too small"),
    (
        "not safetensors",
        lambda f, s: _weights(f).write_text("version https://git-lfs"),
        " is damaged (",
        "safetensors file",
    ),
    (
        "a tensor missing",
        lambda f, s: _save_weights(f, _without(s, "conv_in.bias")),
        " lacks 1 of the ",
        "first: conv_in.bias",
    ),
    (
        "an extra tensor",
        lambda f, s: _save_weights(f, {**s, "extra.weight": torch.zeros(2)}),
        " holds 1 tensors that ",
        "first: extra.weight",
    ),
    (
        "a tensor of another shape",
        lambda f, s: _save_weights(f, {**s, "conv_in.weight": torch.zeros(16, 3, 3, 3)}),
        " holds conv_in.weight of shape [16, 3, 3, 3] where ",
        "has [16, 1, 3, 3] (1 tensors differ)",
    ),
]


@pytest.mark.parametrize(
    "damage, start, reason", [c[1:] for c in DAMAGED_WEIGHTS], ids=[c[0] for c in DAMAGED_WEIGHTS]
)
def test_damaged_weights_are_named_with_what_is_wrong_and_the_fix(folder, damage, start, reason):
    damage(folder, _state(folder))
    message = _one_line_error(ValueError, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert message.startswith(f"{_weights(folder)}{start}") and reason in message, message
    assert message.endswith(
        "copy the unet/ folder again from the source, or re-save the pipeline with save_pretrained"
    )
    assert "ignore_mismatched_sizes" not in message


def test_a_missing_shard_is_named(folder):
    state = _state(folder)
    _index(folder, "diffusion_pytorch_model.safetensors.index.json", "model-00001-of-00002.safetensors", state)
    message = _one_line_error(FileNotFoundError, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert message.startswith(f"{folder / 'unet' / 'model-00001-of-00002.safetensors'} is missing; copy the unet/")


def test_non_finite_weights_are_refused_with_their_count_and_never_sampled(folder, tmp_path, capsys):
    state = _state(folder)
    state["conv_in.weight"].view(-1)[:3] = float("nan")
    state["conv_out.bias"][0] = float("inf")
    _save_weights(folder, state)
    message = _one_line_error(ValueError, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert message.startswith(
        f"{_weights(folder)} holds 4 non-finite weights (NaN or infinity) in 2 tensors (first: conv_in.weight), "
        "which would sample black images"
    )
    grid = tmp_path / "grid.png"
    assert main(["sample", str(folder), "--num_images", "1", "--steps", "1", "--output", str(grid)]) == 2
    assert "4 non-finite weights" in capsys.readouterr().err and not grid.exists()


def _edit(folder, part, **changes):
    path = folder / part
    data = json.loads(path.read_text())
    for key, value in changes.items():
        data.pop(key) if value is _DELETE else data.__setitem__(key, value)
    path.write_text(json.dumps(data))
    return path


_DELETE = object()
UNET, SCHEDULER, INDEX = "unet/config.json", "scheduler/scheduler_config.json", "model_index.json"

# (id, file, changes, exception type, the line, "{}" standing for the file's path)
BAD_CONFIGS = [
    ("unet key missing", UNET, {"block_out_channels": _DELETE}, ValueError, "{} has no block_out_channels; copy"),
    (
        "unet size a string",
        UNET,
        {"sample_size": "8"},
        TypeError,
        "sample_size in {} must be a size or [height, width], got '8' (str)",
    ),
    (
        "unet count a bool",
        UNET,
        {"layers_per_block": True},
        TypeError,
        "layers_per_block in {} must be a positive integer, got True (bool)",
    ),
    (
        "unet number a list",
        UNET,
        {"norm_eps": [1e-5]},
        TypeError,
        "norm_eps in {} must be a number, got [1e-05] (list)",
    ),
    (
        "unet size 10**9",
        UNET,
        {"sample_size": 10**9},
        ValueError,
        "sample_size in {} must be in [1, 16384], got 1000000000",
    ),
    (
        "unet channels huge",
        UNET,
        {"block_out_channels": [10**9, 10**9]},
        ValueError,
        "block_out_channels in {} must be in [1, 65536]",
    ),
    (
        "unet negative channels",
        UNET,
        {"in_channels": -1},
        ValueError,
        "in_channels in {} must be in [1, 65536], got -1 (int)",
    ),
    (
        "scheduler steps a string",
        SCHEDULER,
        {"num_train_timesteps": "1000"},
        ValueError,
        "num_train_timesteps in {} must be an integer, got '1000' (str)",
    ),
    (
        "scheduler steps a bool",
        SCHEDULER,
        {"num_train_timesteps": True},
        ValueError,
        "num_train_timesteps in {} must be an integer, got True (bool)",
    ),
    (
        "scheduler steps a float",
        SCHEDULER,
        {"num_train_timesteps": 1000.0},
        ValueError,
        "num_train_timesteps in {} must be an integer, got 1000.0",
    ),
    (
        "scheduler beta a list",
        SCHEDULER,
        {"beta_start": [0.0001]},
        ValueError,
        "beta_start in {} must be a finite number, got [0.0001] (list)",
    ),
    (
        "scheduler beta NaN",
        SCHEDULER,
        {"beta_end": float("nan")},
        ValueError,
        "beta_end in {} must be a finite number, got nan (float)",
    ),
    (
        "scheduler switch a string",
        SCHEDULER,
        {"clip_sample": "yes"},
        ValueError,
        "clip_sample in {} must be true or false, got 'yes' (str)",
    ),
    (
        "scheduler betas a string",
        SCHEDULER,
        {"trained_betas": "x"},
        ValueError,
        "trained_betas in {} must be a list of finite numbers or null",
    ),
    (
        "scheduler steps negative",
        SCHEDULER,
        {"num_train_timesteps": -5},
        ValueError,
        "{} does not make a DDPMScheduler (",
    ),
    ("index unet entry missing", INDEX, {"unet": _DELETE}, ValueError, "{} has no unet entry ([library, class name])"),
    (
        "index unet entry a string",
        INDEX,
        {"unet": "UNet2DModel"},
        ValueError,
        "{} has no unet entry ([library, class name])",
    ),
    (
        "index entry of numbers",
        INDEX,
        {"unet": [3, "UNet2DModel"]},
        ValueError,
        "{} has unet [3, 'UNet2DModel'], not [library, class name]",
    ),
    (
        "index version not a version",
        INDEX,
        {"_hfddpm_version": "abc"},
        ValueError,
        "{} has _hfddpm_version 'abc', which is not a version",
    ),
    (
        "index steps a string",
        INDEX,
        {"default_num_inference_steps": "4"},
        ValueError,
        "{} has default_num_inference_steps '4', not a positive",
    ),
    (
        "index steps a bool",
        INDEX,
        {"default_num_inference_steps": True},
        ValueError,
        "{} has default_num_inference_steps True, not a positive",
    ),
    ("index labels a list", INDEX, {"id2label": ["a", "b"]}, ValueError, "{} has id2label ['a', 'b'], not an object"),
]


@pytest.mark.parametrize(
    "part, changes, error_type, line", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_a_bad_configuration_file_is_named_with_its_key(folder, part, changes, error_type, line):
    path = _edit(folder, part, **changes)
    message = _one_line_error(error_type, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert message.startswith(line.format(path)), message
    assert message.endswith(("save_pretrained", "from_pretrained")), message


def test_weights_of_a_variant_need_the_variant(folder):
    state = _state(folder)
    _weights(folder).rename(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    message = _one_line_error(FileNotFoundError, lambda: HFDDPMPipeline.from_pretrained(folder))
    assert message.startswith(
        f"{folder / 'unet'} has no diffusion_pytorch_model.safetensors but holds "
        "['diffusion_pytorch_model.fp16.safetensors']: pass the variant they were saved as"
    )
    pipe = HFDDPMPipeline.from_pretrained(folder, variant="fp16")
    torch.testing.assert_close(pipe.unet.state_dict(), state, rtol=0, atol=0)


def test_a_folder_is_a_path_or_a_string(folder):
    message = _one_line_error(TypeError, lambda: HFDDPMPipeline.from_pretrained(3))
    assert message == "pretrained_model_name_or_path must be a folder or a Hub repository id, got int"
    assert HFDDPMPipeline.from_pretrained(pathlib.Path(folder)).unet.config.in_channels == 1


def test_weights_with_the_attention_names_of_older_diffusers_still_load(folder):
    # google/ddpm-cifar10-32's weights name attention query/key/value/proj_attn; diffusers renames them on load, and
    # the shape check must too, or it would refuse the stock checkpoints.
    state = _state(folder)
    old_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    renamed = {}
    for key, tensor in state.items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        renamed[key] = tensor
    assert len(renamed.keys() - state.keys()) == 32  # 4 projections × (weight, bias) × 4 attention blocks
    _save_weights(folder, renamed)
    torch.testing.assert_close(HFDDPMPipeline.from_pretrained(folder).unet.state_dict(), state, rtol=0, atol=0)
