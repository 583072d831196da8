"""Class-conditional sampling and classifier-free guidance, against closed forms and the exact conditional denoiser
of a labelled Gaussian mixture (label = component)."""

import re

import diffusers
import numpy as np
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser, HFDDPMPipeline, create_unet
from hfddpm.conditioning import guided_prediction, num_classes, predict
from hfddpm.pipelines.pipeline_hfddpm import NonFiniteSampleError

from .conftest import gaussian_gamma

MEANS = torch.stack([torch.full((1, 2, 2), -0.5), torch.full((1, 2, 2), 0.5)])
STDS = [0.1, 0.2]


def mixture(scheduler, class_conditional=True):
    return GaussianMixtureDenoiser.for_scheduler(
        scheduler, MEANS, STDS, weights=[0.3, 0.7], class_conditional=class_conditional
    )


def pipeline(model, scheduler, **kwargs):
    pipe = HFDDPMPipeline(unet=model, scheduler=scheduler, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe, n=8, seed=0, **kwargs):
    return pipe(batch_size=n, generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs).images


def test_guided_prediction_is_the_conditional_one_at_w_1_and_the_unconditional_one_at_w_0():
    conditional, unconditional = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert torch.equal(guided_prediction(conditional, unconditional, 1.0, 2), conditional)
    assert torch.equal(guided_prediction(conditional, unconditional, 0.0, 2), unconditional)
    expected = unconditional + 3.0 * (conditional - unconditional)
    torch.testing.assert_close(guided_prediction(conditional, unconditional, 3.0, 2), expected)


def test_a_learned_variance_keeps_the_conditional_variance_and_guides_the_prediction_only():
    conditional, unconditional = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    guided = guided_prediction(conditional, unconditional, 4.0, 3)
    assert torch.equal(guided[:, 3:], conditional[:, 3:])  # GLIDE's choice
    assert torch.equal(guided_prediction(conditional, unconditional, 0.0, 3), unconditional)  # w = 0: all of it
    torch.testing.assert_close(guided[:, :3], unconditional[:, :3] + 4.0 * (conditional - unconditional)[:, :3])


def test_label_k_of_the_conditional_mixture_is_the_exact_denoiser_of_component_k():
    scheduler = DDPMScheduler()
    model = mixture(scheduler)
    x, t = torch.randn(5, 1, 2, 2), torch.tensor(400)
    for k in (0, 1):
        alone = GaussianMixtureDenoiser.for_scheduler(scheduler, MEANS[k : k + 1], STDS[k : k + 1])
        assert torch.equal(predict(model, x, t, torch.full((5,), k)), alone(x, t).sample)
    assert torch.equal(predict(model, x, t), mixture(scheduler, class_conditional=False)(x, t).sample)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler, diffusers.DPMSolverMultistepScheduler])
def test_w_1_samples_the_conditional_model_and_w_0_the_unconditional_one_exactly(scheduler_class):
    # hfddpm's schedulers and a stock multistep one: the guidance sits in the network call, whatever the step.
    scheduler = scheduler_class.from_config(DDPMScheduler(clip_sample=False).config)
    pipe = pipeline(mixture(scheduler), scheduler)
    for k in (0, 1):
        alone = GaussianMixtureDenoiser.for_scheduler(scheduler, MEANS[k : k + 1], STDS[k : k + 1])
        expected = draw(pipeline(alone, scheduler), num_inference_steps=20)
        assert torch.equal(draw(pipe, class_labels=k, guidance_scale=1.0, num_inference_steps=20), expected)
    unconditional = draw(pipeline(mixture(scheduler, class_conditional=False), scheduler), num_inference_steps=20)
    assert torch.equal(draw(pipe, class_labels=1, guidance_scale=0.0, num_inference_steps=20), unconditional)
    assert torch.equal(draw(pipe, num_inference_steps=20), unconditional)  # no labels: ε_θ(x_t, t, ∅)


def test_guidance_runs_both_halves_as_one_batch_with_the_formula_of_separate_calls():
    torch.manual_seed(0)
    unet = create_unet("tiny", in_channels=1, sample_size=8, num_class_embeds=4).eval()
    pipe = pipeline(unet, DDIMScheduler(), id2label={0: "a", 1: "b", 2: "c"})
    x, t, labels = torch.randn(3, 1, 8, 8), torch.tensor(500), torch.tensor([0, 2, 1])
    with torch.no_grad():
        conditional = unet(x, t, class_labels=labels).sample
        unconditional = unet(x, t, class_labels=torch.full((3,), 3)).sample
        guided = pipe.model_output(x, t, labels, 2.5)
    # float32 convolutions of a batch of 6 and of 3 may round differently
    torch.testing.assert_close(guided, unconditional + 2.5 * (conditional - unconditional), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [0, 1])
def test_sampling_with_label_k_reproduces_component_k(k):
    # Label k's exact denoiser and DDPM with component k's exact reverse variance — Analytic-DPM's, whose
    # Γ_t = E‖ε̂‖²/d is (1 − ᾱ_t)/(ᾱ_t s_k² + 1 − ᾱ_t) in closed form for N(μ_k, s_k² I) — sample N(μ_k, s_k² I) at any
    # step count ("linspace" runs from t = T − 1 to 0). The tolerance is four standard errors of the Monte Carlo
    # mean and spread (2000 samples × 4 pixels); the spread also falls short by Var(x_0|x_0 noised to t = 0)
    # ≈ 10⁻⁴ s_k²/(s_k² + 10⁻⁴) (the last step returns the mean), under 1 %.
    gamma = gaussian_gamma(DDPMScheduler(), STDS[k]).tolist()
    scheduler = DDPMScheduler(
        clip_sample=False, reverse_variance="analytic", analytic_gamma=gamma, timestep_spacing="linspace"
    )
    pipe = pipeline(mixture(scheduler), scheduler)
    samples = draw(pipe, n=2000, class_labels=k, guidance_scale=1.0, num_inference_steps=10) * 2 - 1
    mean, std, n = MEANS[k].mean().item(), STDS[k], samples.numel()
    assert abs(samples.mean().item() - mean) < 4 * std / n**0.5
    assert abs(samples.std().item() - std) < 4 * std / (2 * n) ** 0.5 + 0.01 * std


def test_guidance_above_1_pushes_each_label_away_from_the_other_component_and_tightens_it():
    # w > 1 trades diversity for fidelity: ε̂_c − ε̂_∅ points from the mixture towards component 0, so label 0's
    # samples move further from component 1 (at +0.5) and tighten as w grows. The steps between the measured means
    # are over 20 standard errors of the Monte Carlo mean.
    scheduler = DDIMScheduler(clip_sample=False)
    pipe = pipeline(mixture(scheduler), scheduler)
    means, spreads = [], []
    for w in (1.0, 3.0, 5.0):
        image_means = (draw(pipe, n=1000, class_labels=0, guidance_scale=w, num_inference_steps=50) * 2 - 1).mean(
            (1, 2, 3)
        )
        means.append(image_means.mean().item())
        spreads.append(image_means.std().item())
    assert means[0] > means[1] > means[2] and abs(means[0] + 0.5) < 0.01  # w = 1: component 0's mean
    assert spreads[0] > spreads[1] > spreads[2]


def test_labels_are_ids_or_names_one_per_image_or_one_for_the_batch():
    scheduler = DDIMScheduler(clip_sample=False)
    pipe = pipeline(mixture(scheduler), scheduler, id2label={0: "dark", 1: "light"})
    assert pipe.labels == {"dark": 0, "light": 1} and pipe.get_label_ids(["light"]) == [1]
    by_name = draw(pipe, n=1, class_labels=["dark", "light", "light"], num_inference_steps=5)
    by_id = draw(pipe, n=3, class_labels=torch.tensor([0, 1, 1]), num_inference_steps=5)
    by_numpy = draw(pipe, n=3, class_labels=np.array([0, 1, 1]), num_inference_steps=5)
    assert torch.equal(by_name, by_id) and torch.equal(by_id, by_numpy) and by_name.shape[0] == 3
    assert torch.equal(draw(pipe, n=3, class_labels="light", num_inference_steps=5)[1:], by_id[1:])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        # As a long tensor, True would be label 1 and 0.5 label 0.
        ({"class_labels": True}, TypeError, r"class label must be an integer, got True \(bool\)"),
        ({"class_labels": 0.5}, TypeError, r"class label must be an integer, got 0.5 \(float\)"),
        # NaN would make every image NaN; infinity overflows at the first step.
        ({"class_labels": 0, "guidance_scale": float("nan")}, ValueError, r"guidance_scale .* in \[0, inf\).*nan"),
        ({"class_labels": 0, "guidance_scale": float("inf")}, ValueError, r"guidance_scale .* in \[0, inf\).*inf"),
    ],
)
def test_labels_that_are_no_ids_and_scales_that_are_no_weights_are_refused(kwargs, error, message):
    # The other refusals of labels (unknown names, ids out of range, counts) are the pipeline's
    # (test_pipeline.py::test_labels_that_would_draw_other_images_are_refused).
    scheduler = DDIMScheduler()
    pipe = pipeline(mixture(scheduler), scheduler, id2label={0: "dark", 1: "light"})
    with pytest.raises(error, match=message):
        pipe(num_inference_steps=2, **kwargs)


def test_other_kinds_of_class_embedding_are_refused():
    unet = create_unet("tiny", in_channels=1, sample_size=8, class_embed_type="timestep")
    with pytest.raises(ValueError, match="class_embed_type is 'timestep'; hfddpm conditions on class labels through"):
        num_classes(unet)


def test_a_class_conditional_folder_round_trips_and_stock_diffusers_loads_it_but_needs_labels(tmp_path):
    torch.manual_seed(0)
    unet = create_unet("tiny", in_channels=1, sample_size=8, num_class_embeds=4)
    pipe = pipeline(unet, DDIMScheduler(), id2label={0: "cat", 1: "dog", 2: "owl"})
    pipe.save_pretrained(tmp_path)
    loaded = HFDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.id2label == {0: "cat", 1: "dog", 2: "owl"} and loaded.num_classes == 3
    same = {"num_inference_steps": 3, "class_labels": ["owl", "cat"], "guidance_scale": 2.0}
    assert torch.equal(draw(pipe, n=1, **same), draw(loaded, n=1, **same))

    # Stock diffusers loads the folder as a DDIMPipeline (id2label is ignored with a warning) and its UNet as is,
    # but DDIMPipeline passes no class labels, so calling it raises diffusers' own error.
    stock = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert type(stock) is diffusers.DDIMPipeline
    with pytest.raises(ValueError, match="class_labels should be provided when doing class conditioning"):
        stock(num_inference_steps=2)
    stock_unet = diffusers.UNet2DModel.from_pretrained(tmp_path, subfolder="unet")
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        unet.eval()
        torch.testing.assert_close(  # the same weights; the attention kernels may round differently
            stock_unet(x, 10, class_labels=torch.tensor([2])).sample,
            unet(x, 10, class_labels=torch.tensor([2])).sample,
        )


def test_evaluating_a_class_conditional_model_draws_every_class_alike_with_guidance(monkeypatch):
    # `hfddpm evaluate` scores the model users call with labels, not its unconditional half: sample i is of class
    # i mod K, at the default guidance scale.
    from hfddpm.evaluation import report

    drawn = {}

    def generate(pipe, num_samples, *args, class_labels=None, **kwargs):
        drawn["labels"] = class_labels
        return torch.rand(num_samples, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    monkeypatch.setattr(report, "generate_samples", generate)
    unet = create_unet("tiny", in_channels=1, sample_size=8, num_class_embeds=4)
    pipe = pipeline(unet, DDIMScheduler(), id2label={0: "a", 1: "b", 2: "c"})
    result = report.evaluate_pipeline(pipe, "digits", ["digits_scores"], num_samples=7)
    assert drawn["labels"] == [0, 1, 2, 0, 1, 2, 0]
    assert "class i mod 3 for sample i, guidance scale 1.5" in result.details["samples"]["source"]


@pytest.mark.parametrize(
    "scheduler, guidance_scale, where",
    [
        (DDPMScheduler(clip_sample=False), 1e39, "step 1 of 2 (timestep 500)"),  # w itself beyond float32
        (DDIMScheduler(clip_sample=False), 1e30, "step 2 of 2 (timestep 0)"),  # w ε̂ in range, x̂_0 = … / √ᾱ not
    ],
)
def test_a_guidance_scale_that_overflows_is_reported_with_the_step(scheduler, guidance_scale, where):
    # Finite weights and a finite w, yet the guided sample leaves float32's range: the call says where and why
    # instead of returning black images. (With clipping on, x̂_0 is clipped and the images are merely saturated.)
    torch.manual_seed(0)
    unet = create_unet("tiny", in_channels=1, sample_size=8, num_class_embeds=3)
    pipe = pipeline(unet, scheduler, id2label={0: "a", 1: "b"})
    with pytest.raises(NonFiniteSampleError, match=rf"NaN or infinite at {re.escape(where)}: .* lower guidance_scale"):
        pipe(class_labels="a", guidance_scale=guidance_scale, num_inference_steps=2)
