"""Fréchet distances against direct computation and torchmetrics; the shipped digits classifier and its metrics."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

from hfddpm.evaluation.digits_classifier import HELD_OUT_ACCURACY, digits_tensors, held_out_accuracy
from hfddpm.evaluation.features import DigitsFeatures, Dinov2Features, InceptionFeatures
from hfddpm.evaluation.frechet import FeatureStatistics, cached_statistics, frechet_distance
from hfddpm.evaluation.sample_quality import digits_scores, load_image_folder, reference_statistics


def _random_gaussian_features(n, d, seed):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing + torch.randn(d, generator=generator)


def test_frechet_distance_is_the_direct_float64_formula():
    first, second = _random_gaussian_features(2000, 8, 0), _random_gaussian_features(3000, 8, 1)
    mu1, mu2 = first.mean(0).numpy(), second.mean(0).numpy()
    sigma1, sigma2 = np.cov(first.numpy(), rowvar=False), np.cov(second.numpy(), rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * scipy.linalg.sqrtm(sigma1 @ sigma2).real)
    ours = frechet_distance(FeatureStatistics.of(first), FeatureStatistics.of(second))
    assert ours == pytest.approx(expected, rel=1e-9)
    # Commuting covariances: FD = ‖μ_1 − μ_2‖² + Σ_i (σ_1i − σ_2i)², the W2 distance of the two Gaussians.
    a = FeatureStatistics(torch.tensor([0.0, 1.0]), torch.diag(torch.tensor([4.0, 1.0])), 10)
    b = FeatureStatistics(torch.tensor([3.0, 1.0]), torch.diag(torch.tensor([1.0, 9.0])), 10)
    assert frechet_distance(a, b) == pytest.approx(9 + (2 - 1) ** 2 + (1 - 3) ** 2, rel=1e-12)


def test_frechet_distance_agrees_with_torchmetrics():
    first, second = _random_gaussian_features(500, 16, 2), _random_gaussian_features(700, 16, 3)
    a, b = FeatureStatistics.of(first), FeatureStatistics.of(second)
    theirs = _compute_fid(a.mean, a.covariance, b.mean, b.covariance).item()
    assert frechet_distance(a, b) == pytest.approx(theirs, rel=1e-8)


class _DigitsFeatureModule(torch.nn.Module):
    """The digits features as the `feature` module torchmetrics' FID accepts."""

    def __init__(self):
        super().__init__()
        self.features = DigitsFeatures()
        self.num_features = 64

    def forward(self, images):
        return self.features(images)


def test_fid_pipeline_agrees_with_torchmetrics_frechet_inception_distance_on_the_same_features():
    train, _ = digits_tensors("train")
    test, _ = digits_tensors("test")
    metric = FrechetInceptionDistance(feature=_DigitsFeatureModule(), normalize=True, input_img_size=(1, 8, 8))
    metric.update(train, real=True)
    metric.update(test, real=False)
    extractor = DigitsFeatures()
    ours = frechet_distance(FeatureStatistics.of(extractor(test)), FeatureStatistics.of(extractor(train)))
    assert ours == pytest.approx(metric.compute().item(), rel=1e-5)


def test_frechet_distance_of_one_distribution_is_its_small_sample_bias():
    # For two draws of N samples of N(μ, I_d), E[FD] ≈ 2d/N (the means) + d(d + 1)/(2N) (the covariances), to
    # second order in the sampling error: 0.26 at N = 200, d = 8, and → 0 as N grows.
    generator = torch.Generator().manual_seed(0)
    d = 8

    def draw(n):
        return FeatureStatistics.of(torch.randn(n, d, generator=generator, dtype=torch.float64) + 3)

    small = np.mean([frechet_distance(draw(200), draw(200)) for _ in range(40)])
    assert small == pytest.approx(2 * d / 200 + d * (d + 1) / 400, rel=0.1)
    assert frechet_distance(draw(50_000), draw(50_000)) < 2e-3


def test_shipped_digits_classifier_has_its_stated_held_out_accuracy():
    accuracy = held_out_accuracy(DigitsFeatures().model)
    # One borderline digit may flip between CPUs with other vector units.
    assert accuracy == pytest.approx(HELD_OUT_ACCURACY, abs=1.5 / 297) and accuracy > 0.96


def test_noise_scores_far_worse_than_real_digits(tmp_path):
    extractor = DigitsFeatures()
    reference = reference_statistics(extractor, "digits", "train", resolution=8, channels=1, cache_dir=tmp_path)
    test, _ = digits_tensors("test")
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0))
    real_fd = frechet_distance(FeatureStatistics.of(extractor(test)), reference)
    noise_fd = frechet_distance(FeatureStatistics.of(extractor(noise)), reference)
    assert real_fd < 15 and noise_fd > 5 * real_fd
    real, bad = digits_scores(extractor.probabilities(test)), digits_scores(extractor.probabilities(noise))
    assert real["digits_class_coverage"] == 1.0 and real["digits_confidence"] > 0.75
    assert bad["digits_confidence"] < 0.5 * real["digits_confidence"]


def test_reference_statistics_are_cached_by_their_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return FeatureStatistics.of(_random_gaussian_features(10, 3, 0))

    first = cached_statistics({"dataset": "x", "extractor": "e"}, compute, tmp_path)
    again = cached_statistics({"extractor": "e", "dataset": "x"}, compute, tmp_path)
    other = cached_statistics({"dataset": "y", "extractor": "e"}, compute, tmp_path)
    assert len(calls) == 2 and torch.equal(first.covariance, again.covariance) and other.count == 10
    assert len(list((tmp_path / "reference_statistics").glob("*.safetensors"))) == 2


def test_image_folder_loads_as_samples(tmp_path):
    import PIL.Image

    for i in range(3):
        PIL.Image.fromarray(np.full((8, 8), 60 * i, dtype=np.uint8), mode="L").save(tmp_path / f"{i}.png")
    images = load_image_folder(tmp_path)
    assert images.shape == (3, 1, 8, 8) and images[2].max().item() == pytest.approx(120 / 255)
    PIL.Image.new("L", (4, 4)).save(tmp_path / "3.png")
    with pytest.raises(ValueError, match=r"3.png is \(4, 4\), the first image \(8, 8\); use one size"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        load_image_folder(tmp_path / "empty")


def test_networks_that_need_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth; none at .*--inception_weights"):
        InceptionFeatures(tmp_path / "pt_inception.pth")
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
