"""HFDDPMPipeline's call interface: outputs, seeds, schedulers, precision, and refused arguments."""

import diffusers
import diffusers.callbacks
import numpy as np
import PIL.Image
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, HFDDPMPipeline
from hfddpm.arguments import checked_integer, checked_number
from hfddpm.pipelines.pipeline_hfddpm import NonFiniteSampleError

from .conftest import make_pipeline, tiny_unet


@pytest.fixture
def pipe():
    return make_pipeline(tiny_unet(channels=3), DDIMScheduler(timestep_spacing="trailing"))


def test_output_types(pipe):
    kwargs = {"batch_size": 2, "generator": torch.manual_seed(0), "num_inference_steps": 3}
    pil = pipe(**kwargs, output_type="pil").images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (8, 8) and pil[0].mode == "RGB"
    kwargs["generator"] = torch.manual_seed(0)
    array = pipe(**kwargs, output_type="np").images
    assert array.shape == (2, 8, 8, 3) and array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1
    kwargs["generator"] = torch.manual_seed(0)
    tensor = pipe(**kwargs, output_type="pt").images
    assert tensor.shape == (2, 3, 8, 8) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.permute(0, 2, 3, 1).numpy(), array)
    np.testing.assert_array_equal(np.asarray(pil[0]), (array[0] * 255).round().astype(np.uint8))


def test_grayscale_pil_and_tuple_output():
    pipe = make_pipeline(tiny_unet(channels=1), DDPMScheduler())
    (images,) = pipe(batch_size=3, num_inference_steps=2, return_dict=False)
    assert len(images) == 3 and images[0].mode == "L"


def test_same_seed_same_images_and_different_seed_different_images(pipe):
    a = pipe(batch_size=2, generator=torch.manual_seed(3), num_inference_steps=4, eta=0.5, output_type="np").images
    b = pipe(batch_size=2, generator=torch.manual_seed(3), num_inference_steps=4, eta=0.5, output_type="np").images
    c = pipe(batch_size=2, generator=torch.manual_seed(4), num_inference_steps=4, eta=0.5, output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_a_generator_per_image_makes_images_independent_of_the_batch(pipe):
    # Image i depends on generator i only, noise added at each step (η = 1) included.
    batch = pipe(
        batch_size=3,
        generator=[torch.Generator().manual_seed(s) for s in (10, 11, 12)],
        num_inference_steps=4,
        eta=1.0,
        output_type="np",
    ).images
    single = pipe(generator=[torch.Generator().manual_seed(11)], num_inference_steps=4, eta=1.0, output_type="np")
    np.testing.assert_allclose(batch[1], single.images[0], atol=1e-5)  # batched convolutions round differently


def test_eta_reaches_ddim_and_changes_the_images(pipe):
    deterministic = [
        pipe(generator=torch.manual_seed(s), num_inference_steps=4, output_type="np").images for s in (0, 0)
    ]
    stochastic = pipe(generator=torch.manual_seed(0), num_inference_steps=4, eta=1.0, output_type="np").images
    np.testing.assert_array_equal(*deterministic)
    assert np.abs(deterministic[0] - stochastic).mean() > 1e-3


def test_same_images_as_stock_ddim_pipeline():
    # With stock settings (leading spacing, ε̂ not re-derived from the clipped x̂_0) hfddpm's DDIM pipeline is
    # stock's DDIMPipeline, bit for bit.
    unet = tiny_unet(channels=3).eval()  # stock pipelines use the mode the model is in; hfddpm samples in eval
    ours = make_pipeline(unet, DDIMScheduler())
    stock = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    stock.set_progress_bar_config(disable=True)
    kwargs = {"batch_size": 2, "num_inference_steps": 10, "eta": 0.5, "output_type": "np"}
    a = ours(generator=torch.manual_seed(0), use_clipped_model_output=False, **kwargs).images
    b = stock(generator=torch.manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(a, b)


def test_ddim_re_derives_epsilon_from_the_clipped_prediction_by_default():
    # A random UNet's x̂_0 lies far outside [−1, 1], so clipping is active at every step.
    pipe = make_pipeline(tiny_unet(channels=3).eval(), DDIMScheduler())  # clip_sample=True, as stock's default
    kwargs = {"batch_size": 2, "num_inference_steps": 10, "output_type": "np"}
    default = pipe(generator=torch.manual_seed(0), **kwargs).images
    consistent = pipe(generator=torch.manual_seed(0), use_clipped_model_output=True, **kwargs).images
    stock_style = pipe(generator=torch.manual_seed(0), use_clipped_model_output=False, **kwargs).images
    np.testing.assert_array_equal(default, consistent)
    assert np.abs(default - stock_style).max() > 1e-2


@pytest.mark.parametrize(
    "scheduler_class",
    [
        diffusers.DPMSolverMultistepScheduler,
        diffusers.EulerAncestralDiscreteScheduler,
        diffusers.HeunDiscreteScheduler,
        diffusers.UniPCMultistepScheduler,
        diffusers.PNDMScheduler,
    ],
)
def test_any_stock_scheduler_plugs_in(scheduler_class):
    scheduler = scheduler_class.from_config(DDPMScheduler().config)
    pipe = make_pipeline(tiny_unet(channels=3), scheduler)
    images = pipe(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=5, output_type="np").images
    again = pipe(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=5, output_type="np").images
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    np.testing.assert_array_equal(images, again)


def test_learned_variance_unet_with_each_kind_of_scheduler():
    unet = tiny_unet(channels=3, learned_variance=True)
    for scheduler in (
        DDPMScheduler(reverse_variance="learned_range"),  # reads the variance channels
        DDIMScheduler(reverse_variance="learned_range"),
        DDIMScheduler(),  # η only: the pipeline passes the prediction channels alone
        diffusers.DDPMScheduler(variance_type="learned_range"),
        diffusers.DPMSolverMultistepScheduler(),
    ):
        pipe = make_pipeline(unet, scheduler)
        images = pipe(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=4, output_type="pt").images
        assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_unet_on_cpu(dtype):
    unet = tiny_unet(channels=3)
    full = make_pipeline(unet, DDIMScheduler())
    reference = full(batch_size=4, generator=torch.manual_seed(0), num_inference_steps=5, output_type="np").images
    half = make_pipeline(tiny_unet(channels=3).to(dtype), DDIMScheduler())
    images = half(batch_size=4, generator=torch.manual_seed(0), num_inference_steps=5, output_type="np").images
    assert half.unet.dtype == dtype and images.dtype == np.float32
    # Same seed, same starting noise (drawn in float32); only the network evaluations are rounded.
    tolerance = {torch.bfloat16: 0.03, torch.float16: 0.005}[dtype]
    assert np.abs(images - reference).mean() < tolerance


def test_sampling_uses_eval_mode_and_restores_the_mode():
    dropout_unet = diffusers.UNet2DModel.from_config({**tiny_unet(channels=3).config, "dropout": 0.5}).train()
    pipe = make_pipeline(dropout_unet, DDIMScheduler())
    a = pipe(generator=torch.manual_seed(0), num_inference_steps=3, output_type="np").images
    b = pipe(generator=torch.manual_seed(0), num_inference_steps=3, output_type="np").images
    np.testing.assert_array_equal(a, b)  # dropout would make these differ
    assert dropout_unet.training


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -2}, ValueError, "batch_size must be a positive integer, got -2"),
        ({"batch_size": True}, TypeError, r"batch_size must be an integer, got True \(bool\)"),
        ({"batch_size": 2.0}, TypeError, r"batch_size must be an integer, got 2.0 \(float\)"),
        ({"num_inference_steps": 0}, ValueError, r"num_inference_steps must be in \[1, 1000\], got 0"),
        ({"num_inference_steps": -3}, ValueError, r"num_inference_steps must be in \[1, 1000\], got -3"),
        ({"num_inference_steps": 1001}, ValueError, r"num_inference_steps must be in \[1, 1000\], got 1001"),
        ({"num_inference_steps": True}, TypeError, r"num_inference_steps must be an integer, got True \(bool\)"),
        ({"num_inference_steps": 2.5}, TypeError, r"num_inference_steps must be an integer, got 2.5 \(float\)"),
        ({"num_inference_steps": "4"}, TypeError, r"num_inference_steps must be an integer, got '4' \(str\)"),
        ({"batch_size": 2, "generator": [torch.manual_seed(0)]}, ValueError, "got 1 generators for batch_size=2"),
        ({"generator": 0}, TypeError, r"generator must be a torch.Generator .*, got 0; use torch.Generator"),
        ({"batch_size": 2, "generator": [0, 1]}, TypeError, "generator must be a torch.Generator or a list of them"),
        ({"output_type": "jpeg"}, ValueError, "output_type must be one of"),
        ({"eta": -0.1}, ValueError, r"eta must be a finite number in \[0, 1\] \(0 is deterministic DDIM"),
        ({"eta": NAN}, ValueError, r"eta must be a finite number in \[0, 1\] .*, got nan"),
        ({"eta": INF}, ValueError, r"eta must be a finite number in \[0, 1\] .*, got inf"),
        ({"eta": 1.5}, ValueError, r"eta must be a finite number in \[0, 1\] .*, got 1.5"),
        ({"eta": "0"}, TypeError, r"eta must be a number, got '0' \(str\)"),
        ({"corrector_steps": -1}, ValueError, "corrector_steps must be an integer >= 0, got -1"),
        ({"corrector_steps": True}, TypeError, r"corrector_steps must be an integer, got True \(bool\)"),
        ({"corrector_steps": 1, "corrector_snr": NAN}, ValueError, r"corrector_snr must be a finite number in \(0"),
        ({"corrector_steps": 1, "corrector_snr": 0}, ValueError, r"corrector_snr must be a finite number in \(0"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "must be among"),
        ({"callback_on_step_end_tensor_inputs": "latents"}, TypeError, "must be a list of names"),
    ],
)
def test_bad_arguments_are_refused_before_sampling(pipe, kwargs, error, message):
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(error, match=message) as info:
        pipe(**kwargs)
    assert "\n" not in str(info.value) and calls == []  # one line, and no network evaluation before it


@pytest.mark.parametrize(
    "steps, batch", [(np.int64(2), np.int32(2)), (np.uint8(3), np.int64(1)), (torch.tensor(2), np.array(2))]
)
def test_numpy_integers_are_counts(pipe, steps, batch):
    images = pipe(batch_size=batch, num_inference_steps=steps, generator=torch.manual_seed(0), output_type="pt")
    assert images.images.shape[0] == int(batch)
    assert pipe.num_timesteps == int(steps)


def test_a_zero_dimensional_tensor_is_its_number():
    """diffusers users pass `torch.tensor(0.5)` for a number: it counts as 0.5 (and a 0-d bool tensor as no number)."""
    assert checked_number("eta", torch.tensor(0.5), 0, 1) == 0.5 and checked_integer("n", np.array(3)) == 3
    with pytest.raises(TypeError, match=r"n must be an integer, got True \(bool\)"):
        checked_integer("n", torch.tensor(True))


def test_learned_variance_scheduler_on_a_fixed_variance_unet_is_refused():
    pipe = make_pipeline(tiny_unet(channels=3), DDPMScheduler(reverse_variance="learned_range"))
    with pytest.raises(ValueError, match="uses a learned variance but the UNet has out_channels=3"):
        pipe(num_inference_steps=2)


def test_callback_inputs_follow_diffusers_convention(pipe):
    # diffusers' PipelineTesterMixin.test_callback_inputs, pointed at HFDDPMPipeline.
    assert pipe._callback_tensor_inputs == ["latents", "pred_original_sample"]

    def subset(pipe, i, t, callback_kwargs):
        assert set(callback_kwargs) <= set(pipe._callback_tensor_inputs)
        return callback_kwargs

    def everything(pipe, i, t, callback_kwargs):
        assert set(callback_kwargs) == set(pipe._callback_tensor_inputs)
        return callback_kwargs

    def zero_at_the_last_step(pipe, i, t, callback_kwargs):
        if i == pipe.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    inputs = {"num_inference_steps": 3, "generator": torch.manual_seed(0), "output_type": "latent"}
    pipe(**inputs, callback_on_step_end=subset, callback_on_step_end_tensor_inputs=["latents"])
    pipe(**inputs, callback_on_step_end=everything, callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    output = pipe(
        **inputs,
        callback_on_step_end=zero_at_the_last_step,
        callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs,
    )[0]
    assert pipe.num_timesteps == 3 and output.abs().sum() == 0


def test_a_diffusers_pipeline_callback_brings_its_tensor_names(pipe):
    class ZeroLatents(diffusers.callbacks.PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    callbacks = diffusers.callbacks.MultiPipelineCallbacks([ZeroLatents()])
    for callback in (ZeroLatents(), callbacks):
        images = pipe(num_inference_steps=2, output_type="latent", callback_on_step_end=callback).images
        assert images.abs().sum() == 0


def test_latent_output_is_the_raw_sample_and_the_others_are_its_images():
    # Without clipping, a random UNet's sample leaves [−1, 1]: "latent" keeps it, "pt" maps and clamps it.
    pipe = make_pipeline(tiny_unet(channels=3), DDIMScheduler(clip_sample=False))
    seen = []
    kwargs = {"batch_size": 2, "num_inference_steps": 3, "callback_on_step_end_tensor_inputs": ["latents"]}
    callback = lambda pipe, i, t, tensors: seen.append(tensors["latents"].clone()) or {}  # noqa: E731
    latent = pipe(generator=torch.manual_seed(0), output_type="latent", callback_on_step_end=callback, **kwargs)
    tensor = pipe(generator=torch.manual_seed(0), output_type="pt", **kwargs).images
    latent = latent.images
    assert latent.dtype == torch.float32 and latent.shape == (2, 3, 8, 8)
    assert torch.equal(latent, seen[-1]) and latent.abs().max() > 1
    assert torch.equal(tensor, (latent / 2 + 0.5).clamp(0, 1))


def test_the_deprecated_callback_name_sample_still_works_with_a_warning(pipe):
    def zero(pipe, i, t, tensors):
        return {"sample": torch.zeros_like(tensors["sample"])}

    with pytest.warns(FutureWarning, match="'sample' is deprecated; name it 'latents'"):
        images = pipe(
            num_inference_steps=2,
            output_type="latent",
            callback_on_step_end=zero,
            callback_on_step_end_tensor_inputs=["sample"],
        ).images
    assert images.abs().sum() == 0


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_non_finite_weights_are_reported_not_drawn_as_black_images(output_type):
    unet = tiny_unet(channels=3)
    with torch.no_grad():
        unet.conv_out.bias[0] = float("nan")
    pipe = make_pipeline(unet, DDPMScheduler())
    message = (
        r"the sample turned non-finite \(NaN or Inf\) at step 1 of 4 \(timestep 750\): the UNet has 1 non-finite "
        "weights; load a checkpoint whose weights are finite"
    )
    with pytest.raises(NonFiniteSampleError, match=message):
        pipe(num_inference_steps=4, output_type=output_type)


def test_a_sample_that_overflows_later_names_its_step():
    pipe = make_pipeline(tiny_unet(channels=3), DDIMScheduler(clip_sample=False))

    def overflow_at_the_third_step(pipe, i, t, tensors):
        return {"latents": tensors["latents"] * (1e39 if i == 2 else 1)}

    with pytest.raises(NonFiniteSampleError, match=r"at step 3 of 5 \(timestep 400\): the network's output or"):
        pipe(num_inference_steps=5, callback_on_step_end=overflow_at_the_third_step)


def test_progress_bar_counts_denoising_steps_and_can_be_turned_off(capsys):
    pipe = HFDDPMPipeline(unet=tiny_unet(channels=3), scheduler=DDIMScheduler())
    pipe(batch_size=3, num_inference_steps=4, corrector_steps=1)
    assert "4/4" in capsys.readouterr().err  # steps, not batches or network evaluations
    pipe.set_progress_bar_config(disable=True)
    pipe(num_inference_steps=3)
    assert capsys.readouterr().err == ""
