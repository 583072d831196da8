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
