"""Inpainting (RePaint) with any checkpoint: the resampling schedule, the closed-form conditional of Gaussian data,
the known region kept exactly, and one-line refusals."""

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser, HFDDPMInpaintPipeline, create_unet
from hfddpm.pipelines.pipeline_hfddpm import NonFiniteSampleError
from hfddpm.schedulers.repaint import renoise, repaint_schedule

# Bottom row generated (white), top row kept (black), for 2×2 images.
BOTTOM_ROW = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)


def inpainter(model, scheduler, **kwargs):
    pipe = HFDDPMInpaintPipeline(unet=model, scheduler=scheduler, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("steps", "jump_length", "jump_n_sample"), [(250, 10, 10), (50, 10, 1), (20, 3, 4), (7, 10, 5)]
)
def test_the_schedule_visits_the_positions_of_diffusers_repaint_scheduler(steps, jump_length, jump_n_sample):
    # Stock RePaintScheduler lists one timestep per move, each jump as jump_length single steps up; ours takes the
    # jump at once (the composed forward steps are one Gaussian). Positions: ours p = N − (stock's index + 1).
    positions = repaint_schedule(steps, jump_length, jump_n_sample)
    stock = diffusers.RePaintScheduler()
    stock.set_timesteps(steps, jump_length, jump_n_sample)
    stock_positions = [0] + [steps - level for level in (stock.timesteps // (1000 // steps)).tolist()]
    within_a_jump = [
        i
        for i in range(1, len(stock_positions) - 1)
        if stock_positions[i - 1] > stock_positions[i] > stock_positions[i + 1]
    ]
    assert positions == [p for i, p in enumerate(stock_positions) if i not in within_a_jump]
    assert positions[0] == 0 and positions[-1] == steps
    reverse_steps = sum(b > a for a, b in zip(positions[:-1], positions[1:], strict=True))
    jump_points = len(range(0, steps - jump_length, jump_length))
    assert reverse_steps == steps + (jump_n_sample - 1) * jump_length * jump_points


def test_renoise_is_the_forward_process_between_two_levels():
    # q(x_t | x_s) = N(√(ᾱ_t/ᾱ_s) x_s, (1 − ᾱ_t/ᾱ_s) I): from x_0 (ᾱ_s = 1) it is q(x_t | x_0), add_noise's.
    scheduler = DDPMScheduler()
    x0, noise = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    alpha_bar = scheduler.alphas_cumprod[300]
    torch.testing.assert_close(
        renoise(x0, torch.tensor(1.0), alpha_bar, noise), scheduler.add_noise(x0, noise, torch.tensor([300]))
    )
    samples = renoise(
        torch.zeros(200_000), scheduler.alphas_cumprod[100], scheduler.alphas_cumprod[600], torch.randn(200_000)
    )
    ratio = (scheduler.alphas_cumprod[600] / scheduler.alphas_cumprod[100]).item()
    assert abs(samples.var().item() - (1 - ratio)) < 5 * (1 - ratio) * (2 / 200_000) ** 0.5


def gaussian_instance():
    """Gaussian 2×2 data N(μ, Σ) with correlated pixels, one draw x of it, and the closed-form conditional of the
    bottom row given the top row: N(μ_u + Σ_uk Σ_kk⁻¹ (x_k − μ_k), Σ_uu − Σ_uk Σ_kk⁻¹ Σ_ku)."""
    torch.manual_seed(0)
    factor = torch.randn(4, 4, dtype=torch.float64) * 0.12
    covariance = factor @ factor.T + 0.01 * torch.eye(4, dtype=torch.float64)  # pixels well inside [−1, 1]
    mean = torch.tensor([0.2, -0.1, 0.3, 0.0], dtype=torch.float64)
    scheduler = DDPMScheduler(clip_sample=False)
    model = GaussianMixtureDenoiser.for_scheduler(
        scheduler, mean.reshape(1, 1, 2, 2), [0.0], covariances=covariance[None]
    )
    x = model.sample_data(1, torch.Generator().manual_seed(5))[0].flatten()
    known, unknown = slice(0, 2), slice(2, 4)
    gain = covariance[unknown, known] @ torch.linalg.inv(covariance[known, known])
    conditional_mean = mean[unknown] + gain @ (x[known] - mean[known])
    conditional_cov = covariance[unknown, unknown] - gain @ covariance[known, unknown]
    return model, scheduler, x, conditional_mean, conditional_cov


@pytest.mark.slow
def test_inpainting_gaussian_data_approaches_the_closed_form_conditional():
    # RePaint is approximate: its resampling lets the generated pixels harmonise with the known ones, but a bias
    # remains. Measured at 250 steps, jump 10, 10 resamplings: mean error 0.007 (a 20th of the conditional std,
    # ≈ 0.2) and covariance error 0.006 (of entries ≈ 0.04); the Monte Carlo standard error of the mean is 0.005.
    # The bounds are three times the measured errors; plain replacement (no resampling) misses the mean by 0.044.
    model, scheduler, x, conditional_mean, conditional_cov = gaussian_instance()
    pipe = inpainter(model, scheduler)
    image = ((x.reshape(1, 1, 2, 2) + 1) / 2).float().expand(2000, -1, -1, -1)

    def error(jump_n_sample):
        out = pipe(
            image, BOTTOM_ROW, 250, 10, jump_n_sample, generator=torch.Generator().manual_seed(1), output_type="pt"
        )
        generated = (out.images.double() * 2 - 1).flatten(1)[:, 2:]
        return (generated.mean(0) - conditional_mean).abs().max().item(), (
            torch.cov(generated.T) - conditional_cov
        ).abs().max().item()

    mean_error, cov_error = error(10)
    assert mean_error < 0.021 and cov_error < 0.018
    assert error(1)[0] > 2 * mean_error


@pytest.mark.parametrize(
    "scheduler_class", [DDPMScheduler, DDIMScheduler, diffusers.DDPMScheduler, diffusers.DDIMScheduler]
)
def test_the_known_region_is_returned_exactly(scheduler_class):
    torch.manual_seed(0)
    unet = create_unet("tiny", in_channels=1, sample_size=8)
    pipe = inpainter(unet, scheduler_class())
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[4:] = 255  # the bottom half is generated
    completed = pipe(
        PIL.Image.fromarray(pixels),
        PIL.Image.fromarray(mask),
        num_inference_steps=10,
        jump_length=3,
        jump_n_sample=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.array_equal(np.asarray(completed)[:4], pixels[:4])
    tensor = pipe(
        torch.from_numpy(pixels / 255.0).float()[None],
        torch.from_numpy(mask / 255.0)[None],
        num_inference_steps=10,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    torch.testing.assert_close(tensor[0, 0, :4].double(), torch.from_numpy(pixels[:4] / 255.0), atol=1e-6, rtol=0)


def test_a_class_conditional_model_inpaints_towards_its_label():
    means = torch.stack([torch.full((1, 2, 2), -0.5), torch.full((1, 2, 2), 0.5)])
    scheduler = DDIMScheduler(clip_sample=False)
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, means, [0.1, 0.1], class_conditional=True)
    pipe = inpainter(model, scheduler)
    image = torch.full((2, 1, 2, 2), 0.5)  # a known top row at 0 (between the components)
    out = (
        pipe(
            image,
            BOTTOM_ROW,
            20,
            class_labels=[0, 1],
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images
        * 2
        - 1
    )
    assert (out[0, 0, 1] < -0.2).all() and (out[1, 0, 1] > 0.2).all()


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (
            torch.rand(1, 1, 4, 4),
            torch.ones(1, 1, 4, 4),
            r"image \(1, 4, 4\) .* model's channels and size \(1, 2, 2\)",
        ),
        (torch.rand(1, 1, 2, 2), torch.ones(1, 1, 3, 3), r"mask_image \(3, 3\) must have the model's .*; resize them"),
        (torch.rand(3, 1, 2, 2), torch.ones(2, 1, 2, 2), "got 2 masks for 3 images: pass one mask, or one per image"),
        # Converting it to 8 bits would clip it.
        (PIL.Image.new("I;16", (2, 2), 40000), torch.ones(1, 1, 2, 2), r"'I;16' pixels \(more than 8 bits\).*convert"),
    ],
    ids=["image size", "mask size", "mask count", "16-bit image"],
)
def test_bad_images_and_masks_are_refused_in_one_line(image, mask, message):
    scheduler = DDPMScheduler()
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, torch.zeros(1, 1, 2, 2), [0.3])
    with pytest.raises(ValueError, match=message):
        inpainter(model, scheduler)(image, mask, num_inference_steps=2)


def test_a_scheduler_that_cannot_go_back_up_is_refused():
    scheduler = diffusers.DPMSolverMultistepScheduler()
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, torch.zeros(1, 1, 2, 2), [0.3])
    with pytest.raises(ValueError, match="use a DDPMScheduler or DDIMScheduler"):
        inpainter(model, scheduler)(torch.rand(1, 1, 2, 2), BOTTOM_ROW)


def test_after_every_step_the_known_pixels_are_the_known_image_noised_to_the_level_reached():
    # Mask all black (everything known): after the step from position p to p + 1 each pixel is
    # √ᾱ x_0 + √(1 − ᾱ) ε at the level of position p + 1, so across 4000 images its mean is √ᾱ x_0 and its variance
    # 1 − ᾱ; an off-by-one level (adjacent levels of a 10-step grid differ by over 10 % in ᾱ) fails the four-
    # standard-error bounds.
    scheduler = DDPMScheduler()
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, torch.zeros(1, 1, 2, 2), [0.3])
    pipe = inpainter(model, scheduler)
    x0 = 0.6
    reached = []

    def record(pipeline, i, t, tensors):
        reached.append((int(t), tensors["latents"][:, 0, 0, 0].double()))
        return {}

    pipe(
        torch.full((4000, 1, 2, 2), (x0 + 1) / 2),
        torch.zeros(1, 1, 2, 2),
        10,
        3,
        2,
        callback_on_step_end=record,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    grid = pipe.scheduler.timesteps.tolist()
    for t, pixels in reached:
        following = grid.index(t) + 1
        alpha_bar = scheduler.alphas_cumprod[grid[following]].item() if following < len(grid) else 1.0
        mean, variance = alpha_bar**0.5 * x0, 1 - alpha_bar
        assert abs(pixels.mean().item() - mean) <= 4 * (variance / 4000) ** 0.5 + 1e-6
        assert abs(pixels.var().item() - variance) <= 4 * variance * (2 / 4000) ** 0.5 + 1e-6
    assert len(reached) == 10 + (2 - 1) * 3 * 3  # N + (r − 1)·j·|{0, j, 2j, …} below N − j|: the evaluations


def test_inpainting_with_a_learned_variance_and_guidance_keeps_the_known_pixels():
    torch.manual_seed(0)
    unet = create_unet("tiny", in_channels=1, sample_size=8, learned_variance=True, num_class_embeds=3)
    scheduler = DDPMScheduler(reverse_variance="learned_range")
    pipe = inpainter(unet, scheduler, id2label={0: "a", 1: "b"})
    image, mask = torch.rand(2, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    out = pipe(
        image,
        mask,
        6,
        2,
        2,
        class_labels=["a", "b"],
        guidance_scale=3.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[..., :4, :], image[..., :4, :], atol=1e-6, rtol=0)
    assert not torch.allclose(out[..., 4:, :], image[..., 4:, :], atol=1e-3)


def test_guided_inpainting_pushes_towards_the_label_harder_than_w_1():
    means = torch.stack([torch.full((1, 2, 2), -0.5), torch.full((1, 2, 2), 0.5)])
    scheduler = DDIMScheduler(clip_sample=False)
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, means, [0.2, 0.2], class_conditional=True)
    pipe = inpainter(model, scheduler, id2label={0: "dark", 1: "light"})
    image = torch.full((500, 1, 2, 2), 0.5)
    generated = []
    for w in (1.0, 4.0):
        out = (
            pipe(
                image,
                BOTTOM_ROW,
                20,
                class_labels="light",
                guidance_scale=w,
                output_type="pt",
                generator=torch.Generator().manual_seed(0),
            ).images
            * 2
            - 1
        )
        generated.append(out[:, 0, 1].mean().item())
    assert generated[1] > generated[0] > 0


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"jump_length": 0}, ValueError, r"jump_length must be in \[1, inf\), got 0"),
        ({"jump_n_sample": -1}, ValueError, r"jump_n_sample must be in \[1, inf\), got -1"),
        ({"jump_length": True}, TypeError, r"jump_length must be an integer, got True \(bool\)"),  # else a jump of 1
        ({"num_inference_steps": 1001}, ValueError, r"num_inference_steps must be in \[1, 1000\], got 1001"),
    ],
)
def test_bad_resampling_and_sampling_arguments_are_refused(options, error, message):
    scheduler = DDPMScheduler()
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, torch.zeros(1, 1, 2, 2), [0.3])
    with pytest.raises(error, match=message):
        inpainter(model, scheduler)(torch.rand(1, 1, 2, 2), BOTTOM_ROW, **{"num_inference_steps": 4, **options})


def test_numpy_integers_set_the_resampling():
    scheduler = DDPMScheduler()
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, torch.zeros(1, 1, 2, 2), [0.3])
    pipe = inpainter(model, scheduler)
    pipe(torch.rand(1, 1, 2, 2), BOTTOM_ROW, np.int64(10), np.int32(3), np.int64(2), output_type="pt")
    assert pipe.num_timesteps == 10 + (2 - 1) * 3 * 3  # the reverse steps of repaint_schedule(10, 3, 2)


def test_the_progress_bar_counts_network_evaluations(capsys):
    scheduler = DDPMScheduler()
    model = GaussianMixtureDenoiser.for_scheduler(scheduler, torch.zeros(1, 1, 2, 2), [0.3])
    pipe = HFDDPMInpaintPipeline(unet=model, scheduler=scheduler)
    pipe(torch.rand(1, 1, 2, 2), BOTTOM_ROW, 10, 3, 2)
    assert "19/19" in capsys.readouterr().err  # 10 steps and 9 resampled ones; the 3 jumps up are not counted
    pipe.set_progress_bar_config(disable=True)
    pipe(torch.rand(1, 1, 2, 2), BOTTOM_ROW, 10, 3, 2)
    assert capsys.readouterr().err == ""


def test_non_finite_weights_stop_inpainting_with_the_step():
    torch.manual_seed(0)
    unet = create_unet("tiny", in_channels=1, sample_size=8)
    with torch.no_grad():
        unet.conv_out.weight[0, 0, 0, 0] = float("inf")
    pipe = inpainter(unet, DDIMScheduler())
    with pytest.raises(NonFiniteSampleError, match=r"at step 1 of 4 \(timestep 750\): the UNet holds 1 non-finite"):
        pipe(torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 8), 4, 2, 1)
