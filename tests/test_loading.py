"""`HFDDPMPipeline.from_pretrained` (hfddpm.pipelines.loading) runs no code and unpickles nothing from a checkpoint
unless asked, and refuses in one line, naming the file and the fix, a folder whose weights would sample wrong
numbers: damaged, incomplete, of another network, non-finite, or written by a newer hfddpm."""

import contextlib
import json
import pickle
import re
import shutil

import diffusers
import numpy as np
import pytest
import safetensors.torch
import torch

import hfddpm
from hfddpm import DDPMScheduler, HFDDPMPipeline

from .conftest import tiny_unet
from .fake_hub import FakeHub

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


class WritesMarker:
    """Unpickling this object opens (creates) `path`: the stand-in for a pickle that runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An hfddpm pipeline folder as save_pretrained writes it (safetensors weights), saved once."""
    folder = tmp_path_factory.mktemp("saved") / "pipeline"
    HFDDPMPipeline(unet=tiny_unet(channels=1), scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


@pytest.fixture
def folder(saved, tmp_path):
    """A fresh copy of `saved` to damage."""
    return shutil.copytree(saved, tmp_path / "pipeline")


def refusal(error_type, folder, **options) -> str:
    """The one-line message of `from_pretrained(folder, **options)`'s refusal."""
    with pytest.raises(error_type) as info:
        HFDDPMPipeline.from_pretrained(folder, **options)
    message = str(info.value)
    assert "\n" not in message
    return message


def images(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=2, output_type="np").images


def state(folder) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / WEIGHTS)


def edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_pickle_weights_load_only_with_allow_pickle_and_only_as_tensors(folder, tmp_path, monkeypatch):
    pipe = HFDDPMPipeline.from_pretrained(folder)
    diffusers.DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler).save_pretrained(
        tmp_path / "pickled", safe_serialization=False
    )
    assert sorted(p.name for p in (tmp_path / "pickled" / "unet").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.bin",
    ]
    message = refusal(ValueError, tmp_path / "pickled")
    assert "diffusion_pytorch_model.bin is a pickle" in message and "allow_pickle=True" in message

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or real_load(*args, **kwargs))
    pickled = HFDDPMPipeline.from_pretrained(tmp_path / "pickled", allow_pickle=True)
    assert loads and all(kwargs.get("weights_only") is True for kwargs in loads)
    assert type(pickled.scheduler) is DDPMScheduler
    np.testing.assert_array_equal(images(pickled), images(pipe))


def pickle_alone(folder, payload, serialize=torch.save):
    (folder / WEIGHTS).unlink()
    serialize(payload, folder / "unet" / "diffusion_pytorch_model.bin")
    return "diffusion_pytorch_model.bin", {}


def behind_an_index(index_name, shard="weights.bin", keep_safetensors=True, variant=None):
    """A weights index mapping every tensor to the pickle `shard`, beside the safetensors file or instead of it."""

    def damage(folder, payload):
        keys = list(state(folder))
        torch.save(payload, folder / "unet" / shard)
        (folder / "unet" / index_name).write_text(
            json.dumps({"metadata": {}, "weight_map": dict.fromkeys(keys, shard)})
        )
        if not keep_safetensors:
            (folder / WEIGHTS).unlink()
        return shard, {"variant": variant} if variant else {}

    return damage


# (id, damage(folder, payload) → (the pickle's name, from_pretrained options)): every way diffusers reads a pickle.
PICKLE_PATHS = [
    ("alone, torch.save", pickle_alone),
    (
        "alone, plain pickle",
        lambda f, p: pickle_alone(f, p, lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2))),
    ),
    ("safetensors index naming a .bin shard", behind_an_index("diffusion_pytorch_model.safetensors.index.json")),
    (
        "safetensors index naming another suffix",
        behind_an_index("diffusion_pytorch_model.safetensors.index.json", "w.dat"),
    ),
    (
        "variant index, legacy name",
        behind_an_index("diffusion_pytorch_model.fp16.safetensors.index.json", variant="fp16"),
    ),
    (
        "variant index, diffusers' name",
        behind_an_index("diffusion_pytorch_model.safetensors.index.fp16.json", variant="fp16"),
    ),
    ("sharded .bin index", behind_an_index("diffusion_pytorch_model.bin.index.json", keep_safetensors=False)),
]


@pytest.mark.parametrize("allow_pickle", [False, True])
@pytest.mark.parametrize("name, damage", PICKLE_PATHS, ids=[name for name, _ in PICKLE_PATHS])
def test_a_pickle_that_runs_code_never_runs(folder, tmp_path, name, damage, allow_pickle):
    marker = tmp_path / "code-ran"
    payload = {**state(folder), "conv_in.weight": WritesMarker(marker)}
    shard, options = damage(folder, payload)
    message = refusal(ValueError, folder, allow_pickle=allow_pickle, **options)
    # Without allow_pickle the pickle is named with the way out; with it, diffusers' weights-only unpickler refuses
    # the payload (or, for the indexes diffusers does not read, finds no weights).
    if not allow_pickle:
        assert shard in message and "allow_pickle=True" in message
    assert not marker.exists()
    with contextlib.suppress(Exception):  # the payload is real: a full unpickling runs it
        torch.load(folder / "unet" / shard, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "index_name, shard, variant",
    [
        ("diffusion_pytorch_model.safetensors.index.json", "weights.bin", None),
        ("diffusion_pytorch_model.safetensors.index.json", "weights.dat", None),
        ("diffusion_pytorch_model.safetensors.index.fp16.json", "weights.bin", "fp16"),
    ],
    ids=["a .bin shard", "another suffix", "variant index, diffusers' name"],
)
def test_a_pickle_of_tensors_named_by_a_safetensors_index_loads_only_with_allow_pickle(
    folder, index_name, shard, variant
):
    tensors = state(folder)
    _, options = behind_an_index(index_name, shard, variant=variant)(folder, tensors)
    message = refusal(ValueError, folder, **options)
    assert shard in message and "unpickling can run code" in message and "allow_pickle=True" in message
    loaded = HFDDPMPipeline.from_pretrained(folder, allow_pickle=True, **options)
    torch.testing.assert_close(loaded.unet.state_dict(), tensors, rtol=0, atol=0)


@pytest.mark.parametrize(
    "options, error_type, match",
    [
        ({"custom_pipeline": "my_pipeline"}, ValueError, r"custom_pipeline would run code .*; drop it"),
        ({"trust_remote_code": True}, ValueError, r"trust_remote_code would run code .*; drop it"),
        ({"load_connected_pipeline": True}, ValueError, r"load_connected_pipeline would run code .*; drop it"),
        ({"use_safetensors": False}, ValueError, r"use_safetensors=False loads pickle .*pass allow_pickle=True"),
        ({"allow_pickle": "no"}, TypeError, r"allow_pickle must be True or False, got 'no'"),  # "no" is truthy
    ],
)
def test_options_that_would_load_code_or_pickles_are_refused(saved, options, error_type, match):
    assert pytest.raises(error_type, HFDDPMPipeline.from_pretrained, saved, **options).match(match)


@pytest.mark.parametrize("where", ["unet library", "scheduler library", "pipeline class", "unet/diffusers.py"])
def test_code_named_by_a_checkpoint_is_refused_before_it_is_imported(folder, tmp_path, where):
    marker = tmp_path / "code-ran"
    code = f"open({str(marker)!r}, 'w')\nfrom diffusers import *\n"
    index = folder / "model_index.json"
    if where == "unet library":
        (folder / "unet" / "my_unet.py").write_text(code)
        edit_json(index, unet=["my_unet", "UNet2DModel"])
        match = r"loads unet from 'my_unet'; hfddpm loads components from \['diffusers', 'hfddpm'\] only"
    elif where == "scheduler library":
        (folder / "my_scheduler.py").write_text(code)
        edit_json(index, scheduler=["my_scheduler", "DDPMScheduler"])
        match = "loads scheduler from 'my_scheduler'"
    elif where == "pipeline class":
        (folder / "my_pipeline.py").write_text(code)
        edit_json(index, _class_name=["my_pipeline", "MyPipeline"])
        match = r"names a custom pipeline \(\['my_pipeline', 'MyPipeline'\]\); hfddpm never runs code"
    else:  # a file named after a trusted library, which diffusers would import from the component folder
        (folder / "unet" / "diffusers.py").write_text(code)
        match = r"unet/diffusers.py would be imported as the code of unet, .*: delete it"
    assert re.search(match, refusal(ValueError, folder)) and not marker.exists()


def test_a_hub_repository_is_checked_before_its_download_and_pickles_need_allow_pickle(
    saved, folder, tmp_path, monkeypatch
):
    (folder / "my_pipeline.py").write_text(f"open({str(tmp_path / 'code-ran')!r}, 'w')\n")
    edit_json(folder / "model_index.json", _class_name=["my_pipeline", "MyPipeline"])
    pickled = tmp_path / "pickled"
    shutil.copytree(saved, pickled)
    tensors = state(pickled)
    (pickled / WEIGHTS).unlink()
    torch.save(tensors, pickled / "unet" / "diffusion_pytorch_model.bin")

    with FakeHub().serving(monkeypatch) as hub:
        hub.add_repo("user/custom", folder)
        hub.add_repo("user/pickled", pickled)
        load = lambda repo, **options: HFDDPMPipeline.from_pretrained(repo, cache_dir=tmp_path / "cache", **options)  # noqa: E731
        with pytest.raises(ValueError, match=r"^user/custom/model_index.json names a custom pipeline"):
            load("user/custom")
        fetched = [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]
        assert fetched == ["/user/custom/resolve/main/model_index.json"]  # nothing else, no code
        with pytest.raises(ValueError, match=r"diffusion_pytorch_model.bin is a pickle.*allow_pickle=True"):
            load("user/pickled")
        torch.testing.assert_close(load("user/pickled", allow_pickle=True).unet.state_dict(), tensors, rtol=0, atol=0)
        with pytest.raises(FileNotFoundError, match=r"'user/absent' is not a local folder .*check the path or the"):
            load("user/absent")
    assert not (tmp_path / "code-ran").exists()


def test_a_path_that_is_neither_a_folder_nor_a_repository_id_is_refused():
    with pytest.raises(FileNotFoundError, match=r"is not a local folder .*; check the path or the repository id"):
        HFDDPMPipeline.from_pretrained("/nonexistent/outputs/ddpm-digits")


def without(tensors, key):
    return {k: v for k, v in tensors.items() if k != key}


def save_weights(folder, tensors):
    safetensors.torch.save_file(tensors, folder / WEIGHTS)


def index_a_missing_shard(folder):
    weight_map = dict.fromkeys(state(folder), "model-00001-of-00002.safetensors")
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / WEIGHTS).unlink()


def set_first(tensors, key, value):
    tensors[key].view(-1)[:2] = value  # conv_out.bias has one value: 3 in all
    return tensors


# (id, damage(folder), exception type, essential words): what diffusers would load wrongly, or not say clearly.
DAMAGED = [
    ("no model_index.json", lambda f: (f / "model_index.json").unlink(), FileNotFoundError, "holds no pipeline"),
    ("model_index.json not JSON", lambda f: (f / "model_index.json").write_text("{"), ValueError, "is not valid JSON"),
    ("model_index.json a list", lambda f: (f / "model_index.json").write_text("[]"), ValueError, "not an object"),
    (
        "no unet entry",
        lambda f: (f / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}'),
        ValueError,
        r"has no unet entry \[library, class name\]",
    ),
    (
        "a scheduler diffusers lacks",
        lambda f: edit_json(f / "model_index.json", scheduler=["diffusers", "NoScheduler"]),
        ValueError,
        "names the scheduler 'NoScheduler', which diffusers does not have",
    ),
    (
        "a scheduler config its constructor refuses",
        lambda f: edit_json(f / "scheduler" / "scheduler_config.json", beta_end=float("nan")),
        ValueError,
        r"scheduler_config.json does not make a DDPMScheduler \(beta_end must be a finite number",
    ),
    ("weights missing", lambda f: (f / WEIGHTS).unlink(), ValueError, "unet does not load"),
    (
        "weights truncated",
        lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:-100]),
        ValueError,
        "unet does not load",
    ),
    ("weights empty", lambda f: (f / WEIGHTS).write_bytes(b""), ValueError, "unet does not load"),
    (
        "a Git LFS pointer",
        lambda f: (f / WEIGHTS).write_text("version https://git-lfs"),
        ValueError,
        "unet does not load .*git-lfs",
    ),
    (
        "a tensor missing",
        lambda f: save_weights(f, without(state(f), "conv_in.bias")),
        ValueError,
        r"unet lacks 1 tensors of the network its config.json describes \(first: conv_in.bias\)",
    ),
    (
        "an extra tensor",
        lambda f: save_weights(f, {**state(f), "extra.weight": torch.zeros(2)}),
        ValueError,
        r"unet holds unknown 1 tensors .*\(first: extra.weight\)",
    ),
    (
        "a tensor of another shape",
        lambda f: save_weights(f, {**state(f), "conv_in.weight": torch.zeros(16, 3, 3, 3)}),
        ValueError,
        r"unet does not load \(.*conv_in.weight",
    ),
    ("a shard missing", lambda f: index_a_missing_shard(f), ValueError, "model-00001-of-00002.safetensors"),
    (
        "variant weights loaded without their variant",
        lambda f: (f / WEIGHTS).rename(f / "unet" / "diffusion_pytorch_model.fp16.safetensors"),
        ValueError,
        r"unet does not load \(.*no file named diffusion_pytorch_model.safetensors",
    ),
    (
        "NaN and infinite weights",
        lambda f: save_weights(
            f, set_first(set_first(state(f), "conv_in.weight", float("nan")), "conv_out.bias", float("inf"))
        ),
        ValueError,
        r"unet holds 3 non-finite weights \(NaN or infinity\), which would sample black images",
    ),
    (
        "saved by a newer hfddpm",
        lambda f: edit_json(f / "model_index.json", _hfddpm_version="99.0.0"),
        ValueError,
        rf"saved by hfddpm 99.0.0, newer than the installed {hfddpm.__version__}; upgrade",
    ),
]


@pytest.mark.parametrize("damage, error_type, match", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_a_folder_that_would_sample_wrong_numbers_is_refused_in_one_line(folder, damage, error_type, match):
    damage(folder)
    message = refusal(error_type, folder)
    assert re.search(match, message), message
    assert any(fix in message for fix in ("save_pretrained", "upgrade", "retrain")), message


def test_a_folder_of_an_older_hfddpm_or_of_older_diffusers_attention_names_loads(folder):
    # google/ddpm-cifar10-32's weights name attention query/key/value/proj_attn; diffusers renames them on load.
    edit_json(folder / "model_index.json", _hfddpm_version="0.0.1")
    tensors = state(folder)
    old_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    renamed = {}
    for key, tensor in tensors.items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        renamed[key] = tensor
    assert len(renamed.keys() - tensors.keys()) > 0
    save_weights(folder, renamed)
    torch.testing.assert_close(HFDDPMPipeline.from_pretrained(folder).unet.state_dict(), tensors, rtol=0, atol=0)
