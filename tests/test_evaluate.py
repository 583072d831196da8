"""`hfddpm.evaluate` and `hfddpm evaluate`: a checkpoint's bits/dim and sample metrics on the built-in digits."""

import json
import shutil
import subprocess
import sys

import PIL.Image
import pytest
import torch

import hfddpm
import hfddpm.cli
from hfddpm import DDPMScheduler, HFDDPMPipeline
from hfddpm.evaluation import variational_bound
from hfddpm.evaluation.digits_classifier import digits_tensors
from hfddpm.evaluation.features import DigitsFeatures
from hfddpm.evaluation.frechet import FeatureStatistics, frechet_distance
from hfddpm.evaluation.sample_quality import digits_scores, generate_samples, reference_statistics
from hfddpm.image_data import image_batches
from hfddpm.model_cards import model_card

from .conftest import tiny_unet


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-digits")
    scheduler = DDPMScheduler(num_train_timesteps=20)
    HFDDPMPipeline(unet=tiny_unet(channels=1, sample_size=8), scheduler=scheduler).save_pretrained(folder)
    return folder


def test_evaluate_reports_the_bound_of_the_checkpoint(checkpoint, tmp_path):
    report = hfddpm.evaluate(
        checkpoint,
        "digits",
        ["bits_per_dim"],
        max_images=10,
        batch_size=4,
        num_timesteps=5,
        output_dir=tmp_path,
        progress_bar=False,
    )
    details = report.details["bits_per_dim"]
    assert details["split"] == "test" and details["num_images"] == 10 and details["num_timesteps"] == 5
    assert details["reverse_variance"] == "fixed_small" and details["decoder"] == "discretized"

    # The same number as the bound computed directly on the same images with the same seed.
    pipe = HFDDPMPipeline.from_pretrained(checkpoint)
    batches = image_batches("digits", "test", resolution=8, channels=1, batch_size=4, max_images=10)
    direct = variational_bound(
        pipe.unet, pipe.scheduler, batches, 5, generator=torch.Generator().manual_seed(0), progress_bar=False
    )
    assert report.metrics["bits_per_dim"] == pytest.approx(direct.bits_per_dim, rel=1e-12)

    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["metrics"] == report.metrics and saved["details"]["bits_per_dim"]["timesteps"][0] == 0
    assert (tmp_path / "bits_per_dim_terms.png").read_bytes()[:4] == b"\x89PNG"
    assert "bits/dim ≤" in report.summary()


def test_evaluate_draws_seeded_samples_and_measures_them_against_the_reference_split(checkpoint, tmp_path):
    options = {"num_samples": 24, "num_inference_steps": 4, "batch_size": 10, "cache_dir": tmp_path}
    report = hfddpm.evaluate(checkpoint, "digits", ["fd_digits", "digits_scores"], progress_bar=False, **options)
    assert report.details["samples"]["num_samples"] == 24 and report.details["fd_digits"]["num_reference"] == 1500

    # Independently: the same seeded samples (image i from seed i, whatever the batch size) and the same features.
    pipe = HFDDPMPipeline.from_pretrained(checkpoint)
    samples = generate_samples(pipe, 24, batch_size=7, num_inference_steps=4, progress_bar=False)
    extractor = DigitsFeatures()
    reference = reference_statistics(extractor, "digits", "train", 8, 1, cache_dir=tmp_path)
    expected = frechet_distance(FeatureStatistics.of(extractor(samples)), reference)
    assert report.metrics["fd_digits"] == pytest.approx(expected, rel=1e-6)
    scores = digits_scores(extractor.probabilities(samples))
    assert report.metrics["digits_class_coverage"] == scores["digits_class_coverage"]
    assert report.metrics["digits_confidence"] == pytest.approx(scores["digits_confidence"], rel=1e-6)


def test_a_folder_of_real_digits_scores_as_a_near_perfect_generator(tmp_path):
    images, _ = digits_tensors("test")
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, image in enumerate(images):
        PIL.Image.fromarray((image[0] * 255).round().byte().numpy(), mode="L").save(folder / f"{i:04d}.png")
    report = hfddpm.evaluate(folder, "digits", ["fd_digits", "digits_scores"], cache_dir=tmp_path, progress_bar=False)
    assert report.metrics["fd_digits"] < 15 and report.metrics["digits_class_coverage"] == 1.0
    with pytest.raises(ValueError, match="holds images, not a pipeline: bits_per_dim needs a checkpoint"):
        hfddpm.evaluate(folder, "digits", ["bits_per_dim"])


def test_evaluate_refuses_unknown_metrics(checkpoint):
    with pytest.raises(ValueError, match=r"unknown metrics \['fid2'\]"):
        hfddpm.evaluate(checkpoint, metrics=["fid2"])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "hfddpm", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_command_line_prints_every_offline_metric_and_refuses_a_missing_checkpoint(checkpoint, tmp_path):
    options = ["--num_samples", "20", "--num_inference_steps", "3", "--cache_dir", str(tmp_path / "cache")]
    result = _cli("evaluate", str(checkpoint), *options, "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    for text in ("bits/dim ≤", "on test (297 images, 20 terms each", "fd_digits", "digits_class_coverage"):
        assert text in result.stdout
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(saved["metrics"]) == {"bits_per_dim", "fd_digits", "digits_class_coverage", "digits_confidence"}

    missing = _cli("evaluate", str(tmp_path / "no-such-run"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"hfddpm evaluate: error: '{tmp_path / 'no-such-run'}' is neither a pipeline folder nor a Hub repository "
        "id ('user/name'); check the path"
    ]


@pytest.fixture
def run_with_card(checkpoint, tmp_path):
    """A copy of the tiny checkpoint with the model card a training run writes beside it."""
    folder = tmp_path / "run"
    shutil.copytree(checkpoint, folder)
    (folder / "README.md").write_text(str(model_card(folder, "run")))
    return folder


BOUND = ["--metrics", "bits_per_dim", "--num_timesteps", "2", "--max_images", "8", "--batch_size", "8"]


def test_evaluate_records_its_numbers_in_the_runs_card_and_keeps_earlier_ones(run_with_card, tmp_path, capsys):
    assert "This checkpoint was not evaluated" in (run_with_card / "README.md").read_text()
    earlier = {
        "metrics": {"fd_digits": 7.5},
        "details": {"samples": {"num_samples": 9, "source": "s", "reference": "r"}},
    }
    (run_with_card / "evaluation.json").write_text(json.dumps(earlier))
    assert hfddpm.cli.main(["evaluate", str(run_with_card), *BOUND]) == 0
    assert "recorded in" in capsys.readouterr().out
    recorded = json.loads((run_with_card / "evaluation.json").read_text())
    assert recorded["metrics"]["fd_digits"] == 7.5 and recorded["details"]["bits_per_dim"]["num_images"] == 8
    card = (run_with_card / "README.md").read_text()
    assert "was not evaluated" not in card and f"| {recorded['metrics']['bits_per_dim']:.4f} | ± " in card
    assert card == str(model_card(run_with_card, "run")) and not list(run_with_card.glob(".*partial"))


@pytest.mark.parametrize("earlier", ["[]", '{"metrics": [1]}'], ids=["a list", "metrics a list"])
def test_an_evaluation_record_that_is_no_record_is_refused_in_one_line(run_with_card, earlier, capsys):
    (run_with_card / "evaluation.json").write_text(earlier)
    assert hfddpm.cli.main(["evaluate", str(run_with_card), *BOUND]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("evaluation.json is not an evaluation record (JSON objects); remove it to record the new numbers")
    )
    assert (run_with_card / "evaluation.json").read_text() == earlier


def test_evaluate_leaves_a_folder_without_an_hfddpm_card_as_it_was(checkpoint, tmp_path):
    folder = tmp_path / "theirs"
    shutil.copytree(checkpoint, folder)
    (folder / "README.md").write_text("# My model\n\nMy own words.\n")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert hfddpm.cli.main(["evaluate", str(folder), *BOUND]) == 0
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "pass --output_dir NEW_FOLDER to save the pipeline with Analytic-DPM's variance there, or --in_place"),
        (["--in_place", "--output_dir", "OUT"], "pass --output_dir NEW_FOLDER"),
        (
            ["--output_dir", "USER"],
            "--output_dir {user} is not empty; name a new or empty folder (nothing was changed)",
        ),
        (["--output_dir", "FILE"], "--output_dir {file} is a file; name a folder"),
    ],
)
def test_analytic_variance_asks_where_to_write_and_never_rewrites_silently(
    run_with_card, tmp_path, capsys, argv, message
):
    user, file = tmp_path / "mine", tmp_path / "notes.txt"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    file.write_text("mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    names = {"OUT": str(tmp_path / "out"), "USER": str(user), "FILE": str(file)}
    assert hfddpm.cli.main(["analytic-variance", str(run_with_card), *[names.get(a, a) for a in argv]]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"hfddpm analytic-variance: error: {message.format(user=user, file=file)}")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_analytic_variance_writes_a_new_folder_with_progress_or_rewrites_in_place_when_asked(
    run_with_card, tmp_path, capsys
):
    before = {p: p.read_bytes() for p in run_with_card.rglob("*") if p.is_file()}
    options = ["--num_images", "8", "--batch_size", "8"]
    out = tmp_path / "analytic"
    assert hfddpm.cli.main(["analytic-variance", str(run_with_card), "--output_dir", str(out), *options]) == 0
    assert "Estimating Γ_t: 100%" in capsys.readouterr().err  # 20 timesteps × 1 batch
    assert {p: p.read_bytes() for p in run_with_card.rglob("*") if p.is_file()} == before  # the run is untouched
    pipe = HFDDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.reverse_variance == "analytic" and len(pipe.scheduler.config.analytic_gamma) == 20
    assert "| reverse variance | analytic |" in (out / "README.md").read_text()
    assert hfddpm.cli.main(["analytic-variance", str(run_with_card), "--in_place", *options]) == 0
    assert (
        HFDDPMPipeline.from_pretrained(run_with_card).scheduler.config.analytic_gamma
        == pipe.scheduler.config.analytic_gamma
    )
    assert "| reverse variance | analytic |" in (run_with_card / "README.md").read_text()
