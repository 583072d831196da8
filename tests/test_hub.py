"""Publishing to the Hub without the network: the model card, the exact upload set through huggingface_hub's real
client against a local HTTP server, the export folder, the one-line errors, and loading from the Hub cache."""

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants
from huggingface_hub.repocard_data import model_index_to_eval_results

from hfddpm import DDIMScheduler, HFDDPMPipeline, create_unet
from hfddpm.cli import main
from hfddpm.hub import HubError, export_for_hub, files_to_publish, push_to_hub
from hfddpm.model_cards import model_card

from .conftest import tiny_unet
from .fake_hub import FakeHub

TOKEN = "hf_fakeTokenThatMustNeverBeWritten123"
PUBLISHED = [
    "README.md",
    "evaluation.json",
    "model_index.json",
    "samples/final.png",
    "scheduler/scheduler_config.json",
    "training_args.json",
    "training_info.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
]


@pytest.fixture
def run_folder(tmp_path):
    """A finished training run's folder: the pipeline, its records, a sample grid, and what must stay local."""
    folder = tmp_path / "run"
    HFDDPMPipeline(unet=tiny_unet(channels=1, sample_size=8), scheduler=DDIMScheduler()).save_pretrained(folder)
    (folder / "samples").mkdir()
    (folder / "samples" / "final.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    args = {"dataset_name": None, "split": "train", "model_preset": "tiny", "train_batch_size": 64, "seed": 0,
            "max_train_steps": 2000, "learning_rate": 2e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 100,
            "use_ema": True, "ema_max_decay": 0.9999, "num_sample_images": 64, "num_inference_steps": 50}  # fmt: skip
    (folder / "training_args.json").write_text(json.dumps(args))
    info = {"device": "cpu (2 threads)", "wall_time_seconds": 556.0, "final_loss": 0.0761, "global_step": 2000,
            "num_processes": 1, "mixed_precision": "no", "parameters": "0.18M",
            "versions": {"hfddpm": "0.1.0", "diffusers": "0.42.1", "torch": "2.13.0"}}  # fmt: skip
    (folder / "training_info.json").write_text(json.dumps(info))
    evaluation = {
        "metrics": {"fd_digits": 5.758, "bits_per_dim": 5.134},
        "details": {
            "samples": {"num_samples": 256, "source": "DDIMScheduler, 50 steps", "reference": "digits train"},
            "bits_per_dim": {
                "split": "test",
                "standard_error": 0.03,
                "num_images": 297,
                "num_timesteps": 1000,
                "reverse_variance": "fixed_small",
            },  # fmt: skip
        },
    }
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    # What must never be published: optimizer state and RNG pickles, logs.
    (folder / "checkpoints" / "checkpoint-500").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-500" / "optimizer.bin").write_bytes(b"pickle")
    (folder / "checkpoints" / "checkpoint-500" / "random_states_0.pkl").write_bytes(b"pickle")
    (folder / "logs").mkdir()
    (folder / "logs" / "train.jsonl").write_text("{}\n")
    return folder


def test_model_card_has_the_metadata_the_hub_indexes_and_round_trips(run_folder):
    card = model_card(run_folder, "user/ddpm-digits")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "unconditional-image-generation"
    assert {"diffusers", "diffusers:HFDDPMPipeline"} <= set(data["tags"]) and data["license"] == "apache-2.0"
    _, results = model_index_to_eval_results(data["model-index"])  # the Hub's own parser of the model-index
    assert {(r.metric_type, r.metric_value, r.dataset_split) for r in results} == {
        ("fd_digits", 5.758, "train"),
        ("bits_per_dim", 5.134, "test"),
    }
    text = str(card)
    assert 'HFDDPMPipeline.from_pretrained("user/ddpm-digits")' in text and "![Samples" in text
    assert "| training time | 9.3 min |" in text and "| noise schedule | linear, T = 1000 |" in text
    assert "297 test images, 1000 terms each" in text
    reloaded = ModelCard(text)
    assert reloaded.data.to_dict() == data and reloaded.content == card.content


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "class-conditional"])
def test_model_card_usage_snippet_runs_as_written(run_folder, monkeypatch, conditional):
    if conditional:
        unet = create_unet("tiny", in_channels=1, sample_size=8, num_class_embeds=4)
        pipe = HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(), id2label={0: "cat", 1: "dog", 2: "owl"})
        pipe.save_pretrained(run_folder)
    snippet = str(model_card(run_folder, "user/ddpm-digits")).split("```python\n")[1].split("```")[0]
    assert ('class_labels=["cat"] * 4 + ["owl"] * 4' in snippet) == conditional
    monkeypatch.chdir(run_folder.parent)
    # The snippet loads from the Hub; here the repository id resolves to the local folder of the same name.
    (run_folder.parent / "user").mkdir()
    shutil.copytree(run_folder, run_folder.parent / "user" / "ddpm-digits")
    exec(compile(snippet.replace("num_inference_steps=50", "num_inference_steps=2"), "card", "exec"), {})
    assert (run_folder.parent / "sample.png").is_file()


def test_only_weights_configs_card_and_images_are_published(run_folder):
    assert files_to_publish(run_folder) == sorted(set(PUBLISHED) - {"README.md"})
    assert "checkpoints/checkpoint-500/optimizer.bin" in files_to_publish(run_folder, include_training_state=True)
    (run_folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, run_folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(HubError, match=r"unet/ has pickle weights only \(diffusion_pytorch_model.bin\)"):
        files_to_publish(run_folder)


def test_push_uploads_exactly_the_published_files_through_the_real_client(run_folder):
    with FakeHub() as hub:
        push_to_hub(run_folder, "user/ddpm-digits", token=TOKEN, private=True, endpoint=hub.endpoint)
    files = hub.published("user/ddpm-digits")
    assert sorted(files) == PUBLISHED and hub.repos["user/ddpm-digits"]["private"]
    for name in PUBLISHED[1:]:
        assert files[name] == (run_folder / name).read_bytes()  # byte for byte
    assert files["README.md"].decode() == str(model_card(run_folder, "user/ddpm-digits"))
    assert all(TOKEN.encode() not in content for content in files.values())
    assert all(headers.get("authorization") == f"Bearer {TOKEN}" for _, _, headers in hub.requests)
    assert not list(run_folder.parent.glob(".run.hub-upload*"))  # the staging export is removed


def test_push_to_a_revision_in_the_background(run_folder):
    with FakeHub() as hub:
        future = push_to_hub(
            run_folder, "user/ddpm-digits", token=TOKEN, revision="step-500", run_as_future=True, endpoint=hub.endpoint
        )
        future.result(timeout=60)
    (commit,) = hub.repos["user/ddpm-digits"]["commits"]
    assert commit["revision"] == "step-500" and sorted(commit["files"]) == PUBLISHED


def test_export_writes_the_folder_a_push_uploads_and_it_loads(run_folder, tmp_path):
    export = tmp_path / "export"
    assert export_for_hub(run_folder, export, "user/ddpm-digits") == PUBLISHED
    assert sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()) == PUBLISHED
    pipe = HFDDPMPipeline.from_pretrained(export)
    assert type(pipe.scheduler) is DDIMScheduler and pipe.unet.config.sample_size == 8


def test_missing_token_bad_repo_id_and_unreachable_hub_are_one_line_errors(run_folder, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no saved login either
    before = sorted(p.relative_to(run_folder) for p in run_folder.rglob("*"))
    with pytest.raises(
        HubError, match=r"^no Hugging Face token: pass --hub_token, set HF_TOKEN or run `hf auth login`"
    ):
        push_to_hub(run_folder, "user/ddpm-digits")
    with pytest.raises(ValueError, match=r"^'user/ddpm digits!' is not a Hub repository id"):
        push_to_hub(run_folder, "user/ddpm digits!", token=TOKEN)
    with pytest.raises(
        HubError, match=r"^could not push to user/ddpm-digits at http://127.0.0.1:9: .* is kept as it is$"
    ):
        push_to_hub(run_folder, "user/ddpm-digits", token=TOKEN, endpoint="http://127.0.0.1:9")
    assert sorted(p.relative_to(run_folder) for p in run_folder.rglob("*")) == before  # nothing lost or left


def test_push_command_line(run_folder, tmp_path, capsys):
    assert main(["push", str(run_folder), "--repo_id", "user/ddpm-digits", "--export_dir", str(tmp_path / "e")]) == 0
    assert "would be uploaded" in capsys.readouterr().out and (tmp_path / "e" / "README.md").is_file()
    with FakeHub() as hub:
        assert (
            main(["push", str(run_folder), "--repo_id", "user/x", "--token", TOKEN, "--endpoint", hub.endpoint]) == 0
        )
    assert sorted(hub.published("user/x")) == PUBLISHED
    assert main(["push", str(run_folder), "--repo_id", "bad id"]) == 2
    assert capsys.readouterr().err.strip().startswith("hfddpm push: error: 'bad id' is not a Hub repository id")


def _fill_hub_cache(cache_dir, repo_id: str, folder) -> None:
    """Lay `folder` out as huggingface_hub's cache does after a download of `repo_id` at main."""
    snapshot = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot)


def _cached_export(run_folder, tmp_path):
    """A Hub cache holding the export of `run_folder` as user/ddpm-digits."""
    cache = tmp_path / "cache"
    export_for_hub(run_folder, tmp_path / "export", "user/ddpm-digits")
    _fill_hub_cache(cache, "user/ddpm-digits", tmp_path / "export")
    return cache


def test_a_cached_hub_repository_loads_with_local_files_only(run_folder, tmp_path):
    cache = _cached_export(run_folder, tmp_path)
    pipe = HFDDPMPipeline.from_pretrained("user/ddpm-digits", cache_dir=cache, local_files_only=True)
    assert type(pipe.scheduler) is DDIMScheduler


@pytest.mark.slow  # HF_HUB_OFFLINE is read at import: a fresh interpreter imports torch and diffusers
def test_a_cached_hub_repository_loads_offline(run_folder, tmp_path):
    cache = _cached_export(run_folder, tmp_path)
    code = (
        "import sys; from hfddpm import HFDDPMPipeline;"
        "pipe = HFDDPMPipeline.from_pretrained('user/ddpm-digits', cache_dir=sys.argv[1], revision='main');"
        "print(type(pipe.scheduler).__name__, pipe.unet.config.sample_size)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(cache)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["DDIMScheduler", "8"]


def test_card_metadata_is_yaml_the_hub_reads(run_folder):
    header = str(model_card(run_folder, "user/ddpm-digits")).split("---")[1]
    metadata = yaml.safe_load(header)
    assert metadata["model-index"][0]["name"] == "ddpm-digits"


def _snapshot(root):
    """Every file under `root` with its bytes: what an export must leave as it was."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("make_target", "message"),
    [
        pytest.param(lambda run, tmp: _user_folder(tmp), r"is not empty; name a new or empty folder", id="user files"),
        pytest.param(lambda run, tmp: tmp, r"holds the run folder .*; export to a new or empty folder", id="parent"),
        pytest.param(lambda run, tmp: run, r"is inside the run folder .*; export to a folder outside it", id="run"),
        pytest.param(lambda run, tmp: run / "samples", r"is inside the run folder", id="run subfolder"),
        pytest.param(lambda run, tmp: run / "export", r"is inside the run folder", id="new folder in the run"),
        pytest.param(lambda run, tmp: _user_file(tmp), r"is a file; name a folder", id="file"),
        pytest.param(
            lambda run, tmp: _user_file(tmp) / "export", r"lies under .*, which is a file", id="under a file"
        ),
    ],
)
def test_export_refuses_any_folder_it_would_empty_or_nest_and_changes_nothing(
    run_folder, tmp_path, make_target, message
):
    target = make_target(run_folder, tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=message):
        export_for_hub(run_folder, target, "user/ddpm-digits")
    assert _snapshot(tmp_path) == before and not list(tmp_path.rglob("*.partial"))


def _user_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    return folder


def _user_file(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's own file")
    return tmp_path / "notes.txt"


def test_push_command_refuses_an_export_folder_in_one_line_and_keeps_the_run(run_folder, tmp_path, capsys):
    before = _snapshot(tmp_path)
    assert main(["push", str(run_folder), "--repo_id", "user/x", "--export_dir", str(run_folder)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"hfddpm push: error: export folder {run_folder} is inside the run folder {run_folder}; export to a folder "
        "outside it"
    ]
    assert _snapshot(tmp_path) == before


def test_export_fills_an_empty_folder_and_a_run_replaces_only_its_own_export(run_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    assert export_for_hub(run_folder, tmp_path / "empty", "user/ddpm-digits") == PUBLISHED
    own = run_folder / "hub-export"  # --hub_dry_run's folder, a run output
    export_for_hub(run_folder, own, "user/ddpm-digits")
    (run_folder / "evaluation.json").unlink()
    assert export_for_hub(run_folder, own, "user/ddpm-digits") == sorted(set(PUBLISHED) - {"evaluation.json"})
    assert sorted(p.relative_to(own).as_posix() for p in own.rglob("*") if p.is_file()) == sorted(
        set(PUBLISHED) - {"evaluation.json"}
    )
    assert not list(run_folder.glob(".hub-export*"))  # no staging or removal leftovers


def test_a_runs_own_export_folder_holding_a_users_file_is_kept(run_folder):
    own = run_folder / "hub-export"
    export_for_hub(run_folder, own, "user/ddpm-digits")
    (own / "notes.txt").write_text("mine")
    before = _snapshot(run_folder)
    with pytest.raises(ValueError, match=r"hub-export holds files that no export of .* wrote; move them, or export"):
        export_for_hub(run_folder, own, "user/ddpm-digits")
    assert _snapshot(run_folder) == before


def test_a_push_from_inside_the_run_folder_uploads_the_run(run_folder, monkeypatch):
    """`hfddpm push .` inside the run: the upload is staged beside the run, not in it (which the export refuses)."""
    monkeypatch.chdir(run_folder)
    with FakeHub() as hub:
        push_to_hub(".", "user/ddpm-digits", token=TOKEN, endpoint=hub.endpoint)
    assert sorted(hub.published("user/ddpm-digits")) == PUBLISHED
    assert not list(run_folder.parent.glob(".*hub-upload*")) and not list(run_folder.glob(".*hub-upload*"))


def test_a_full_disk_or_an_unwritable_folder_stops_the_export_in_one_line(run_folder, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copy2", full_disk)
        with pytest.raises(HubError, match=r"^no space left to export .* nothing was exported: free disk space"):
            export_for_hub(run_folder, tmp_path / "export", "user/ddpm-digits")
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".export*"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match=r"export folder .*/export: .* is not writable; choose a folder you can"):
        export_for_hub(run_folder, tmp_path / "export", "user/ddpm-digits")


def _make_cards():
    script = Path(__file__).resolve().parents[1] / "model_cards" / "make_cards.py"
    spec = importlib.util.spec_from_file_location("make_cards", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_cards_script_writes_the_packages_card_of_each_run_and_refuses_a_missing_one(
    run_folder, tmp_path, capsys
):
    make_cards = _make_cards()
    runs, cards = tmp_path / "outputs", tmp_path / "cards"
    shutil.copytree(run_folder, runs / "ddpm-digits")
    assert make_cards.main(["ddpm-digits", "--runs", str(runs), "--cards", str(cards)]) == 0  # folder created
    text = (cards / "ddpm-digits.md").read_text()
    card = model_card(runs / "ddpm-digits", "outputs/ddpm-digits", sample_grid_link="ddpm-digits.png")
    assert text == str(card) and text.count("ddpm-digits.png") == 1
    assert "![Samples drawn from this model](ddpm-digits.png)" in text and "| 5.1340 |" in text
    assert (cards / "ddpm-digits.png").read_bytes() == (run_folder / "samples" / "final.png").read_bytes()
    committed = (Path(make_cards.__file__).parent / "ddpm-digits.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("#") or line.startswith("| ---")]
    assert [line for line in committed.splitlines() if line.startswith("#") or line.startswith("| ---")] == headings
    before = _snapshot(cards)
    assert make_cards.main(["--runs", str(runs), "--cards", str(cards)]) == 2  # ddpm-digits-v and others missing
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {runs / 'ddpm-digits-v'} holds no run (no model_index.json); train it as model_cards/README.md "
        "says, or pass --runs with the folder that holds it"
    ]
    assert _snapshot(cards) == before  # nothing written before the check


@pytest.mark.parametrize("repo_id", [None, 123, b"user/x", ["user/x"]])
def test_a_repository_id_that_is_not_a_string_is_a_type_error_before_anything_is_written(
    run_folder, tmp_path, repo_id
):
    with pytest.raises(TypeError, match=r"^a Hub repository id is a string 'user/name', got "):
        export_for_hub(run_folder, tmp_path / "export", repo_id)
    assert not (tmp_path / "export").exists()
