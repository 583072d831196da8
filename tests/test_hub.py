"""Publishing without the network: which files go, the model card, the upload through huggingface_hub's real client
against a local HTTP server (tests/fake_hub.py) and back, the export folder, and the one-line errors; the token is
never written anywhere."""

import ast
import errno
import importlib.util
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file

from hfddpm import DDIMScheduler, HFDDPMPipeline, create_unet
from hfddpm.cli import main
from hfddpm.hub import HubError, export_for_hub, files_to_publish, push_to_hub
from hfddpm.model_cards import model_card
from hfddpm.records import pipeline_fingerprint
from hfddpm.training import TrainingConfig

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
# Class and folder names a card must show as they are: code, HTML, a heading, a table cell, quotes and a backslash.
HOSTILE_NAMES = [
    'cat"]; import os; os.system("x")  #',
    "<img src=x onerror=alert(1)>",
    "x\n## Injected",
    "a|b",
    "\\\"'",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished training run's folder: the pipeline, its records, a sample grid, and what must stay local."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    HFDDPMPipeline(unet=tiny_unet(channels=1, sample_size=8), scheduler=DDIMScheduler()).save_pretrained(folder)
    (folder / "samples").mkdir()
    (folder / "samples" / "final.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    args = TrainingConfig(output_dir=str(folder), model_preset="tiny", max_train_steps=2000).recorded()
    (folder / "training_args.json").write_text(json.dumps(args))
    info = {"device": "cpu (2 threads)", "wall_time_seconds": 556.0, "final_loss": 0.0761, "global_step": 2000,
            "num_processes": 1, "mixed_precision": "no", "parameters": "0.18M",
            "versions": {"hfddpm": "0.1.0", "diffusers": "0.42.1", "torch": "2.13.0"}}  # fmt: skip
    (folder / "training_info.json").write_text(json.dumps(info))
    bound = {"split": "test", "standard_error": 0.03, "num_images": 297, "num_timesteps": 1000,
             "reverse_variance": "fixed_small"}  # fmt: skip
    samples = {"num_samples": 256, "source": "DDIMScheduler, 50 steps", "reference": "digits train"}
    evaluation = {
        "checkpoint": str(folder),
        "dataset": "digits",
        "weights": pipeline_fingerprint(folder),
        "metrics": {"fd_digits": 5.758, "bits_per_dim": 5.134},
        "details": {"samples": samples, "bits_per_dim": bound},
    }
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    # What must never be published: optimizer state and RNG pickles, logs.
    (folder / "checkpoints" / "checkpoint-500").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-500" / "optimizer.bin").write_bytes(b"pickle")
    (folder / "checkpoints" / "checkpoint-500" / "random_states_0.pkl").write_bytes(b"pickle")
    (folder / "logs").mkdir()
    (folder / "logs" / "train.jsonl").write_text("{}\n")
    return folder


@pytest.fixture
def run_folder(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run", copy_function=shutil.copy)


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere: not in the environment, not in a saved login."""
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: what a refused command must leave as it was."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_model_card_has_the_metadata_the_hub_indexes_and_round_trips(run_folder):
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
    assert yaml.safe_load(text.split("---")[1])["model-index"][0]["name"] == "ddpm-digits"
    assert 'HFDDPMPipeline.from_pretrained("user/ddpm-digits")' in text and "![Samples" in text
    assert "| training time | 9.3 min |" in text and "| noise schedule | linear, T = 1000 |" in text
    assert "297 test images, 1000 terms each" in text
    reloaded = ModelCard(text)
    assert reloaded.data.to_dict() == data and reloaded.content == card.content


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "class-conditional"])
def test_the_cards_usage_snippet_runs_as_written(run_folder, monkeypatch, conditional):
    if conditional:
        unet = create_unet("tiny", in_channels=1, sample_size=8, num_class_embeds=4)
        pipe = HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(), id2label={0: "cat", 1: "dog", 2: "owl"})
        pipe.save_pretrained(run_folder)
    snippet = str(model_card(run_folder, "user/ddpm-digits")).split("```python\n")[1].split("```")[0]
    assert ('class_labels=["cat"] * 4 + ["owl"] * 4' in snippet) == conditional
    # The snippet loads from the Hub; here the repository id is a local folder of that name.
    monkeypatch.chdir(run_folder.parent)
    shutil.copytree(run_folder, run_folder.parent / "user" / "ddpm-digits")
    exec(compile(snippet.replace("num_inference_steps=50", "num_inference_steps=2"), "card", "exec"), {})
    assert (run_folder.parent / "sample.png").is_file()


def card_naming(folder: Path, name: str) -> tuple[str, str]:
    """The text and the usage code of `folder`'s card when `name` is its one class and its image folder's name."""
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "id2label": {"0": name}}))
    args = json.loads((folder / "training_args.json").read_text())
    (folder / "training_args.json").write_text(json.dumps({**args, "train_data_dir": f"data/{name}"}))
    before, code, after = re.split(r"^```.*\n", model_card(folder, "user/ddpm-digits").text, flags=re.MULTILINE)
    return before + after, code


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_names_from_the_data_stay_literals_in_the_code_and_plain_text_in_the_card(run_folder, name):
    plain_text, _ = card_naming(run_folder, "cat")
    text, code = card_naming(run_folder, name)
    tree = ast.parse(code)  # no name ends the string and runs as code
    labels = next(
        node.value for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "class_labels"
    )
    assert ast.literal_eval(labels.left.left) == [name]  # the class a reader draws is the data's, exactly
    headings = lambda text: [line for line in text.splitlines() if line.startswith("#")]  # noqa: E731
    assert headings(text) == headings(plain_text)  # no name starts a section of its own
    cells = lambda text: [len(re.findall(r"(?<!\\)\|", line)) for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert cells(text) == cells(plain_text)  # nor a table cell
    assert "<img" not in text  # nor HTML


def test_only_weights_configs_card_images_and_records_are_published(run_folder):
    assert files_to_publish(run_folder) == sorted(set(PUBLISHED) - {"README.md"})
    assert "checkpoints/checkpoint-500/optimizer.bin" in files_to_publish(run_folder, include_training_state=True)
    (run_folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, run_folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"is a pickle.*re-save the pipeline as safetensors"):
        files_to_publish(run_folder)


def test_a_push_uploads_exactly_the_published_files_which_load_back_from_the_hub(
    run_folder, tmp_path, monkeypatch, capsys
):
    before = snapshot(run_folder)
    with FakeHub().serving(monkeypatch) as hub:
        push_to_hub(run_folder, "user/ddpm-digits", token=TOKEN, private=True, endpoint=hub.endpoint)
        loaded = HFDDPMPipeline.from_pretrained("user/ddpm-digits", cache_dir=tmp_path / "cache")
    files = hub.published("user/ddpm-digits")
    assert sorted(files) == PUBLISHED and hub.repos["user/ddpm-digits"]["private"]
    assert all(files[name] == (run_folder / name).read_bytes() for name in PUBLISHED[1:])  # byte for byte
    assert files["README.md"].decode() == str(model_card(run_folder, "user/ddpm-digits"))
    uploads = [headers for method, _, headers in hub.requests if method == "POST"]
    assert uploads and all(headers.get("authorization") == f"Bearer {TOKEN}" for headers in uploads)
    # The token is sent, and written nowhere: not in the published files, the run folder or the console.
    assert snapshot(run_folder) == before and all(TOKEN.encode() not in data for data in files.values())
    assert TOKEN not in "".join(capsys.readouterr())
    assert type(loaded.scheduler) is DDIMScheduler
    weights = load_file(run_folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(loaded.unet.state_dict()[key], value) for key, value in weights.items())


def test_a_push_to_a_revision_in_the_background(run_folder):
    with FakeHub() as hub:
        future = push_to_hub(
            run_folder, "user/ddpm-digits", token=TOKEN, revision="step-500", run_as_future=True, endpoint=hub.endpoint
        )
        future.result(timeout=60)
    (commit,) = hub.repos["user/ddpm-digits"]["commits"]
    assert commit["revision"] == "step-500" and sorted(commit["files"]) == PUBLISHED


def test_a_push_from_inside_the_run_folder_uploads_the_run(run_folder, monkeypatch):
    monkeypatch.chdir(run_folder)
    with FakeHub() as hub:
        push_to_hub(".", "user/ddpm-digits", token=TOKEN, endpoint=hub.endpoint)
    assert sorted(hub.published("user/ddpm-digits")) == PUBLISHED
    assert hub.repos["user/ddpm-digits"]["commits"][0]["message"] == "Upload run with hfddpm"


def test_a_missing_token_a_bad_repository_id_and_an_unreachable_hub_are_one_line_errors(run_folder, no_token):
    before = snapshot(run_folder)
    with pytest.raises(HubError, match=r"^no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`"):
        push_to_hub(run_folder, "user/ddpm-digits")
    with pytest.raises(ValueError, match=r"^'user/ddpm digits!' is not a Hub repository id: use 'user/name'"):
        push_to_hub(run_folder, "user/ddpm digits!", token=TOKEN)
    with pytest.raises(HubError, match=r"^could not push to user/ddpm-digits at http://127.0.0.1:9: .* is kept$"):
        push_to_hub(run_folder, "user/ddpm-digits", token=TOKEN, endpoint="http://127.0.0.1:9")
    assert snapshot(run_folder) == before


@pytest.mark.parametrize("repo_id", [None, 123, b"user/x", ["user/x"]])
def test_a_repository_id_that_is_not_a_string_is_refused_before_anything_is_written(run_folder, tmp_path, repo_id):
    with pytest.raises(TypeError, match=r"^a Hub repository id is a string 'user/name', got "):
        export_for_hub(run_folder, tmp_path / "export", repo_id)
    assert not (tmp_path / "export").exists()


def test_the_push_command_needs_a_token_and_uploads_with_one(run_folder, no_token, capsys):
    command = ["push", str(run_folder), "--repo_id", "user/x"]
    assert main(command) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hfddpm push: error: no Hugging Face token: pass --token,") and line.endswith("is kept")
    with FakeHub() as hub:
        assert main([*command, "--token", TOKEN, "--endpoint", hub.endpoint]) == 0
    assert sorted(hub.published("user/x")) == PUBLISHED
    output = capsys.readouterr()
    assert f"pushed {run_folder} to user/x: {hub.endpoint}/user/x/commit/" in output.out
    assert TOKEN not in output.out + output.err


def test_an_export_is_the_folder_a_push_uploads_with_the_modes_of_a_plain_write(run_folder, tmp_path):
    # safetensors writes weights 0600 and a temporary folder is made 0700; what hfddpm writes, a saved pipeline and an
    # export folder among them, gets what a plain write gives under the umask.
    assert stat.S_IMODE((run_folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode) == 0o644
    umask = os.umask(0o022)
    try:
        assert export_for_hub(run_folder, tmp_path / "export", "user/ddpm-digits") == PUBLISHED
    finally:
        os.umask(umask)
    export = tmp_path / "export"
    assert sorted(snapshot(export)) == PUBLISHED
    assert snapshot(export)["README.md"].decode() == str(model_card(run_folder, "user/ddpm-digits"))
    modes = {p.relative_to(export).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [export, *export.rglob("*")]}
    assert modes.pop(".") == 0o755 and modes.pop("unet") == 0o755
    assert modes.pop("samples") == modes.pop("scheduler") == 0o755 and set(modes.values()) == {0o644}
    pipe = HFDDPMPipeline.from_pretrained(export)
    assert type(pipe.scheduler) is DDIMScheduler and pipe.unet.config.sample_size == 8


def user_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    return tmp_path / "mine"


def user_file(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's own file")
    return tmp_path / "notes.txt"


@pytest.mark.parametrize(
    ("make_target", "message"),
    [
        pytest.param(lambda run, tmp: user_folder(tmp), r"is not empty; name a new or empty folder", id="user files"),
        pytest.param(lambda run, tmp: tmp, r"is not empty; name a new or empty folder", id="parent"),
        pytest.param(lambda run, tmp: run, r"is inside the run folder .*; export to a folder outside it", id="run"),
        pytest.param(lambda run, tmp: run / "samples", r"is inside the run folder", id="run subfolder"),
        pytest.param(lambda run, tmp: run / "export", r"is inside the run folder", id="new folder in the run"),
        pytest.param(lambda run, tmp: user_file(tmp), r"is a file; name a folder", id="file"),
        pytest.param(lambda run, tmp: user_file(tmp) / "export", r"lies under .*, which is a file", id="under a file"),
    ],
)
def test_an_export_refuses_any_folder_it_would_empty_or_nest_and_changes_nothing(
    run_folder, tmp_path, make_target, message
):
    target = make_target(run_folder, tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=message):
        export_for_hub(run_folder, target, "user/ddpm-digits")
    assert snapshot(tmp_path) == before and not list(tmp_path.rglob("*.partial"))


def test_an_export_fills_an_empty_folder_and_a_run_replaces_only_its_own_export(run_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    assert export_for_hub(run_folder, tmp_path / "empty", "user/ddpm-digits") == PUBLISHED
    own = run_folder / "hub-export"  # --hub_dry_run's folder, a run output
    export_for_hub(run_folder, own, "user/ddpm-digits")
    (run_folder / "evaluation.json").unlink()
    assert export_for_hub(run_folder, own, "user/ddpm-digits") == sorted(set(PUBLISHED) - {"evaluation.json"})
    assert sorted(snapshot(own)) == sorted(set(PUBLISHED) - {"evaluation.json"})
    assert not list(run_folder.glob(".hub-export*"))  # no staging or removal leftovers
    (own / "notes.txt").write_text("mine")  # now the user's folder too: kept
    before = snapshot(run_folder)
    with pytest.raises(ValueError, match=r"hub-export holds files that no export of .* wrote; move them, or export"):
        export_for_hub(run_folder, own, "user/ddpm-digits")
    assert snapshot(run_folder) == before


def test_a_full_disk_or_an_unwritable_folder_stops_an_export_in_one_line(run_folder, tmp_path, monkeypatch):
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


def test_the_reference_cards_script_writes_each_runs_card_and_refuses_a_missing_run(run_folder, tmp_path, capsys):
    script = Path(__file__).resolve().parents[1] / "model_cards" / "make_cards.py"
    spec = importlib.util.spec_from_file_location("make_cards", script)
    make_cards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_cards)
    runs, cards = tmp_path / "outputs", tmp_path / "cards"
    shutil.copytree(run_folder, runs / "ddpm-digits")
    assert make_cards.main(["ddpm-digits", "--runs", str(runs), "--cards", str(cards)]) == 0  # folder created
    text = (cards / "ddpm-digits.md").read_text()
    card = model_card(runs / "ddpm-digits", "outputs/ddpm-digits", sample_grid_link="ddpm-digits.png")
    assert text == str(card) and "![Samples drawn from this model](ddpm-digits.png)" in text
    assert (cards / "ddpm-digits.png").read_bytes() == (run_folder / "samples" / "final.png").read_bytes()
    committed = (script.parent / "ddpm-digits.md").read_text()  # the committed card has the same sections
    headings = lambda text: [line for line in text.splitlines() if line.startswith(("#", "| ---"))]  # noqa: E731
    assert headings(committed) == headings(text)
    before = snapshot(cards)
    assert make_cards.main(["--runs", str(runs), "--cards", str(cards)]) == 2  # ddpm-digits-v and others missing
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {runs / 'ddpm-digits-v'} holds no run (no model_index.json); train it as")
    assert snapshot(cards) == before  # nothing written before the check
