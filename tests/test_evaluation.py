"""Evaluation: Fréchet distances against their closed forms and torchmetrics, the shipped digits classifier, the
sample metrics, and `evaluate`'s report of a checkpoint (or a folder of images) and its record in a run folder."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

import hfddpm
from hfddpm import HFDDPMPipeline
from hfddpm.evaluation import EvaluationReport, variational_bound
from hfddpm.evaluation.classifiers import HELD_OUT_ACCURACY, held_out_accuracy, labelled_images
from hfddpm.evaluation.features import ClassifierFeatures, Dinov2Features, InceptionFeatures
from hfddpm.evaluation.frechet import FeatureStatistics, cached_statistics, frechet_distance
from hfddpm.evaluation.report import record_evaluation
from hfddpm.evaluation.sample_quality import class_scores, generate_samples, load_image_folder, reference_statistics
from hfddpm.idx_data import IDX_DATASETS, is_idx_folder
from hfddpm.image_data import image_batches
from hfddpm.model_cards import model_card
from hfddpm.records import pipeline_fingerprint


def gaussian_features(n, d, seed):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing + torch.randn(d, generator=generator)


def test_frechet_distance_is_the_closed_form_between_two_gaussians():
    first, second = gaussian_features(2000, 8, 0), gaussian_features(3000, 8, 1)
    mu1, mu2 = first.mean(0).numpy(), second.mean(0).numpy()
    sigma1, sigma2 = np.cov(first.numpy(), rowvar=False), np.cov(second.numpy(), rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * scipy.linalg.sqrtm(sigma1 @ sigma2).real)
    assert frechet_distance(FeatureStatistics.of(first), FeatureStatistics.of(second)) == pytest.approx(
        expected, rel=1e-9
    )
    # Commuting covariances: FD = ‖μ_1 − μ_2‖² + Σ_i (σ_1i − σ_2i)², the W2 distance of the two Gaussians.
    a = FeatureStatistics(torch.tensor([0.0, 1.0]), torch.diag(torch.tensor([4.0, 1.0])), 10)
    b = FeatureStatistics(torch.tensor([3.0, 1.0]), torch.diag(torch.tensor([1.0, 9.0])), 10)
    assert frechet_distance(a, b) == pytest.approx(9 + (2 - 1) ** 2 + (1 - 3) ** 2, rel=1e-12)


def test_frechet_distance_of_one_distribution_is_its_small_sample_bias():
    # For two draws of N samples of N(μ, I_d), E[FD] ≈ 2d/N (the means) + d(d + 1)/(2N) (the covariances), to
    # second order in the sampling error: 0.26 at N = 200, d = 8, and → 0 as N grows.
    generator = torch.Generator().manual_seed(0)

    def draw(n):
        return FeatureStatistics.of(torch.randn(n, 8, generator=generator, dtype=torch.float64) + 3)

    small = np.mean([frechet_distance(draw(200), draw(200)) for _ in range(40)])
    assert small == pytest.approx(2 * 8 / 200 + 8 * 9 / 400, rel=0.1)
    assert frechet_distance(draw(50_000), draw(50_000)) < 2e-3


class DigitsFeatureModule(torch.nn.Module):
    """The digits features as the `feature` module torchmetrics' FID accepts."""

    def __init__(self):
        super().__init__()
        self.features = ClassifierFeatures()
        self.num_features = 64

    def forward(self, images):
        return self.features(images)


def test_the_fd_of_digits_features_is_torchmetrics_fid_with_that_network():
    train, _ = labelled_images("digits", "train")
    test, _ = labelled_images("digits", "test")
    metric = FrechetInceptionDistance(feature=DigitsFeatureModule(), normalize=True, input_img_size=(1, 8, 8))
    metric.update(train, real=True)
    metric.update(test, real=False)
    extractor = ClassifierFeatures()
    ours = frechet_distance(FeatureStatistics.of(extractor(test)), FeatureStatistics.of(extractor(train)))
    assert ours == pytest.approx(metric.compute().item(), rel=1e-5)


@pytest.mark.parametrize("name, dataset, floor", [("digits", "digits", 0.96), ("fashion", "fashion_mnist", 0.9)])
def test_each_shipped_classifier_has_its_stated_held_out_accuracy(name, dataset, floor):
    if name == "fashion" and not is_idx_folder(IDX_DATASETS["fashion_mnist"].folders[0]):
        pytest.skip("needs apt-get install dataset-fashion-mnist (CI installs it)")
    accuracy = held_out_accuracy(ClassifierFeatures(name).model, dataset)
    # One or two borderline images may flip between CPUs with other vector units.
    assert accuracy == pytest.approx(HELD_OUT_ACCURACY[name], abs=2.5e-3 if name == "fashion" else 1.5 / 297)
    assert accuracy > floor  # ordinary for a small CNN (Xiao et al. 2017 report 0.87–0.92 for classic classifiers)


def test_reference_statistics_are_cached_by_their_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return FeatureStatistics.of(gaussian_features(10, 3, 0))

    first = cached_statistics({"dataset": "x", "extractor": "e"}, compute, tmp_path)
    again = cached_statistics({"extractor": "e", "dataset": "x"}, compute, tmp_path)
    other = cached_statistics({"dataset": "y", "extractor": "e"}, compute, tmp_path)
    assert len(calls) == 2 and torch.equal(first.covariance, again.covariance) and other.count == 10
    assert len(list((tmp_path / "reference_statistics").glob("*.safetensors"))) == 2


def save_pngs(images: torch.Tensor, folder):
    folder.mkdir()
    for i, image in enumerate(images):
        PIL.Image.fromarray((image[0] * 255).round().byte().numpy(), mode="L").save(folder / f"{i:04d}.png")
    return folder


def test_a_folder_of_real_digits_scores_as_a_near_perfect_generator_and_noise_far_worse(tmp_path):
    test, _ = labelled_images("digits", "test")
    real = save_pngs(test, tmp_path / "real")
    noise = save_pngs(torch.rand(test.shape, generator=torch.Generator().manual_seed(0)), tmp_path / "noise")
    metrics = ["fd_digits", "digits_scores"]
    good = hfddpm.evaluate(real, "digits", metrics, cache_dir=tmp_path, progress_bar=False).metrics
    bad = hfddpm.evaluate(noise, "digits", metrics, cache_dir=tmp_path, progress_bar=False).metrics
    assert good["fd_digits"] < 15 and good["digits_class_coverage"] == 1.0 and good["digits_confidence"] > 0.75
    assert bad["fd_digits"] > 5 * good["fd_digits"] and bad["digits_confidence"] < 0.5 * good["digits_confidence"]
    with pytest.raises(ValueError, match="holds images, not a pipeline"):
        hfddpm.evaluate(real, "digits", ["bits_per_dim"])


@pytest.mark.slow  # the reference statistics of 60,000 training images
def test_real_clothes_score_near_the_floor_of_fd_fashion_and_noise_far_above(tmp_path):
    if not is_idx_folder(IDX_DATASETS["fashion_mnist"].folders[0]):
        pytest.skip("needs apt-get install dataset-fashion-mnist (CI installs it)")
    test, _ = labelled_images("fashion_mnist", "test")
    real = save_pngs(test[:1000], tmp_path / "real")  # held-out images: what a perfect generator would draw
    noise = save_pngs(torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)), tmp_path / "noise")
    options = {"cache_dir": tmp_path, "progress_bar": False}  # the default metrics of fashion_mnist, but bits/dim
    good = hfddpm.evaluate(real, "fashion_mnist", ["fd_fashion", "fashion_scores"], **options).metrics
    bad = hfddpm.evaluate(noise, "fashion_mnist", ["fd_fashion", "fashion_scores"], **options).metrics
    assert good["fashion_class_coverage"] == 1.0 and good["fashion_confidence"] > 0.8
    assert bad["fd_fashion"] > 20 * good["fd_fashion"]


def test_an_image_folder_loads_as_samples_of_one_size(tmp_path):
    for i in range(3):
        PIL.Image.fromarray(np.full((8, 8), 60 * i, dtype=np.uint8), mode="L").save(tmp_path / f"{i}.png")
    images = load_image_folder(tmp_path)
    assert images.shape == (3, 1, 8, 8) and images[2].max().item() == pytest.approx(120 / 255)
    PIL.Image.new("L", (4, 4)).save(tmp_path / "3.png")
    with pytest.raises(ValueError, match=r"3.png is \(4, 4\), the first image \(8, 8\); use one size"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images .* in .*; point at a folder of samples"):
        load_image_folder(tmp_path / "empty")


def test_networks_that_need_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth; none at .*--inception_weights"):
        InceptionFeatures(tmp_path / "pt_inception.pth")
    (tmp_path / "page.pth").write_text("<html>a download that failed</html>")
    with pytest.raises(ValueError, match=r"page.pth is not pt_inception-2015-12-05-6726825d.pth .*download it again"):
        InceptionFeatures(tmp_path / "page.pth")
    with pytest.raises(FileNotFoundError, match="FD_DINOv2 needs the DINOv2 weights .* --dinov2_model FOLDER"):
        Dinov2Features(tmp_path / "no-dinov2")


def test_dinov2_features_from_a_local_folder(tmp_path):
    # The real code path with a tiny randomly initialised DINOv2 saved locally: class-token features per image.
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    Dinov2Model(config).save_pretrained(tmp_path / "tiny-dinov2")
    extractor = Dinov2Features(tmp_path / "tiny-dinov2")
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    features = extractor(images)
    assert features.shape == (3, 32) and features.dtype == torch.float64
    assert torch.allclose(extractor(images[:1]), features[:1], atol=1e-5)  # no dependence on the batch


def test_evaluate_reports_the_bound_of_the_checkpoint_from_100_stratified_terms(checkpoint, tmp_path):
    report = hfddpm.evaluate(
        checkpoint, "digits", ["bits_per_dim"], max_images=2, batch_size=2, output_dir=tmp_path, progress_bar=False
    )
    details = report.details["bits_per_dim"]
    assert details["split"] == "test" and details["num_images"] == 2 and details["num_timesteps"] == 100  # of 120
    assert details["reverse_variance"] == "fixed_small" and details["decoder"] == "discretized"
    # The same number as the bound computed directly on the same images with the same seed.
    pipe = HFDDPMPipeline.from_pretrained(checkpoint)
    batches = image_batches("digits", "test", resolution=8, channels=1, batch_size=2, max_images=2)
    generator = torch.Generator().manual_seed(0)
    direct = variational_bound(pipe.unet, pipe.scheduler, batches, 100, generator=generator, progress_bar=False)
    assert report.metrics["bits_per_dim"] == pytest.approx(direct.bits_per_dim, rel=1e-12)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved == json.loads(report.to_json()) and saved["details"]["bits_per_dim"]["timesteps"][0] == 0
    assert (tmp_path / "bits_per_dim_terms.png").read_bytes()[:4] == b"\x89PNG"
    assert f"bits/dim ≤ {details['bits_per_dim']:.4f} ± " in report.summary()
    with pytest.raises(ValueError, match=r"unknown metrics \['fid2'\]; choose from \['bits_per_dim'"):
        hfddpm.evaluate(checkpoint, metrics=["fid2"])


def test_evaluate_scores_seeded_samples_against_the_reference_split(checkpoint, tmp_path, capsys):
    options = {"num_samples": 12, "num_inference_steps": 2, "batch_size": 5, "cache_dir": tmp_path}
    report = hfddpm.evaluate(checkpoint, "digits", ["fd_digits", "digits_scores"], progress_bar=True, **options)
    assert "Sampling: 100%" in (err := capsys.readouterr().err) and " 6/6 " in err  # 3 batches × 2 steps: one bar
    assert report.details["samples"]["num_samples"] == 12 and report.details["fd_digits"]["num_reference"] == 1500
    summary = report.summary().splitlines()
    assert summary[1] == "  12 samples (DDPMScheduler, 2 steps, eta 0.0, seed 0) against digits train at 1×8×8:"
    assert [line.split()[0] for line in summary[2:]] == ["fd_digits", "digits_class_coverage", "digits_confidence"]
    # Independently: the same samples (image i from seed i, whatever the batch size) and the same features.
    pipe = HFDDPMPipeline.from_pretrained(checkpoint)
    samples = generate_samples(pipe, 12, batch_size=7, num_inference_steps=2, progress_bar=False)
    extractor = ClassifierFeatures()
    reference = reference_statistics(extractor, "digits", "train", 8, 1, cache_dir=tmp_path)
    expected = frechet_distance(FeatureStatistics.of(extractor(samples)), reference)
    assert report.metrics["fd_digits"] == pytest.approx(expected, rel=1e-6)
    scores = class_scores(extractor.probabilities(samples))
    assert report.metrics["digits_class_coverage"] == scores["digits_class_coverage"]
    assert report.metrics["digits_confidence"] == pytest.approx(scores["digits_confidence"], rel=1e-6)


def bound_report(value: float, weights: str | None) -> EvaluationReport:
    details = {"split": "test", "standard_error": 0.01, "num_images": 8, "num_timesteps": 2,
               "reverse_variance": "fixed_small", "prior_bits_per_dim": 1e-5, "decoder_bits_per_dim": 0.5}  # fmt: skip
    return EvaluationReport("run", "digits", weights, {"bits_per_dim": value}, {"bits_per_dim": details})


def test_a_record_merges_into_the_runs_evaluation_of_the_same_weights_and_rewrites_its_card(run_with_card):
    assert "This checkpoint was not evaluated" in (run_with_card / "README.md").read_text()
    weights = pipeline_fingerprint(run_with_card)
    earlier = {
        "checkpoint": "run",
        "dataset": "digits",
        "weights": weights,
        "metrics": {"fd_digits": 7.5},
        "details": {"samples": {"num_samples": 9, "source": "s", "reference": "r"}},
    }
    (run_with_card / "evaluation.json").write_text(json.dumps(earlier))
    assert record_evaluation(run_with_card, bound_report(3.25, weights))
    recorded = json.loads((run_with_card / "evaluation.json").read_text())
    assert recorded["metrics"] == {"fd_digits": 7.5, "bits_per_dim": 3.25}  # a new metric joins the earlier ones
    assert (
        recorded["details"]["samples"]["num_samples"] == 9 and recorded["details"]["bits_per_dim"]["num_images"] == 8
    )
    card = (run_with_card / "README.md").read_text()
    assert (
        "was not evaluated" not in card and "| 3.2500 | ± " in card and card == str(model_card(run_with_card, "run"))
    )
    assert record_evaluation(run_with_card, bound_report(3.0, weights))  # measured again: replaced
    assert json.loads((run_with_card / "evaluation.json").read_text())["metrics"]["bits_per_dim"] == 3.0
    assert not list(run_with_card.glob(".*partial"))


def test_numbers_of_other_weights_are_not_merged_nor_shown_as_these_weights(run_with_card):
    weights = pipeline_fingerprint(run_with_card)
    assert record_evaluation(run_with_card, bound_report(3.25, weights))
    assert record_evaluation(run_with_card, bound_report(9.0, "0123456789abcdef"))  # e.g. before a resume
    assert json.loads((run_with_card / "evaluation.json").read_text())["metrics"] == {"bits_per_dim": 9.0}
    card = (run_with_card / "README.md").read_text()
    assert "9.0000" not in card and "3.2500" not in card and "not measured on these weights" in card
    assert "model-index" not in card  # nor in the metadata the Hub indexes


@pytest.mark.parametrize("earlier", ["[]", '{"metrics": [1]}', "{"], ids=["a list", "metrics a list", "not JSON"])
def test_an_evaluation_file_that_is_no_record_is_refused_and_kept(run_with_card, earlier):
    (run_with_card / "evaluation.json").write_text(earlier)
    with pytest.raises(ValueError, match=r"evaluation.json: .*; fix the file, or remove it"):
        record_evaluation(run_with_card, bound_report(3.25, None))
    assert (run_with_card / "evaluation.json").read_text() == earlier


def test_a_folder_whose_card_is_someone_elses_is_left_as_it_was(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint, tmp_path / "theirs")
    (folder / "README.md").write_text("# My model\n\nMy own words.\n")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert not record_evaluation(folder, bound_report(3.25, None))
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
