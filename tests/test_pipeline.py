"""HFDDPMPipeline as diffusers users know it: outputs, generators, schedulers, callbacks, progress bar, class labels,
a student's own step count, the refusals of a call, and the saved folder, which stock diffusers loads and which
loads stock folders."""

import functools
import json
from pathlib import Path

import diffusers
import diffusers.callbacks
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hfddpm
from hfddpm import DDIMScheduler, DDPMScheduler, HFDDPMPipeline, create_unet
from hfddpm.pipelines.pipeline_hfddpm import NonFiniteSampleError

from .conftest import make_pipeline, tiny_unet


@pytest.fixture(scope="module")
def unet():
    """An RGB tiny UNet in eval mode (stock pipelines sample in the mode the model is in; hfddpm in eval)."""
    return tiny_unet(channels=3).eval()


@pytest.fixture
def pipe(unet):
    # Without clipping a random UNet's sample leaves [−1, 1], so the outputs' clamping shows.
    return make_pipeline(unet, DDIMScheduler(timestep_spacing="trailing", clip_sample=False))


def images(pipe, seed=0, **kwargs):
    options = {"batch_size": 2, "num_inference_steps": 3, "output_type": "np", **kwargs}
    return pipe(generator=torch.manual_seed(seed), **options).images


def test_every_output_type_is_a_view_of_one_sample(pipe):
    steps = []
    keep = lambda pipe, i, t, tensors: steps.append(tensors["latents"]) or {}  # noqa: E731
    latent = images(pipe, output_type="latent", callback_on_step_end=keep)
    tensor = images(pipe, output_type="pt")
    (array,) = pipe(
        batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np", return_dict=False
    )
    pil = images(pipe, output_type="pil")
    assert latent.dtype == torch.float32 and latent.shape == (2, 3, 8, 8) and torch.equal(latent, steps[-1])
    assert latent.abs().max() > 1  # "latent" is the raw sample; the images map [−1, 1] to [0, 1] and clamp
    assert torch.equal(tensor, (latent / 2 + 0.5).clamp(0, 1))
    np.testing.assert_array_equal(array, tensor.permute(0, 2, 3, 1).numpy())
    assert [(p.mode, p.size) for p in pil] == [("RGB", (8, 8))] * 2
    np.testing.assert_array_equal(np.asarray(pil[1]), (array[1] * 255).round().astype(np.uint8))


def test_image_i_depends_on_generator_i_only(pipe):
    # η = 1: the noise of every step, not only x_T, comes from each image's generator.
    generators = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    options = {"num_inference_steps": 3, "eta": 1.0, "output_type": "np"}
    batch = pipe(batch_size=3, generator=generators(10, 11, 12), **options).images
    again = pipe(batch_size=3, generator=generators(10, 11, 12), **options).images
    alone = pipe(batch_size=1, generator=generators(11), **options).images
    np.testing.assert_array_equal(batch, again)
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)  # batched convolutions round differently
    assert np.abs(batch[0] - batch[1]).mean() > 0.01


def test_same_images_as_stock_ddim_pipeline_and_epsilon_follows_the_clipped_prediction(unet):
    # With stock settings (leading spacing, ε̂ not re-derived from the clipped x̂_0) hfddpm's DDIM is stock's
    # DDIMPipeline bit for bit, η included; by default it re-derives ε̂, which a random UNet's clipping makes differ.
    ours = make_pipeline(unet, DDIMScheduler())
    stock = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    stock.set_progress_bar_config(disable=True)
    stock_style = images(ours, eta=0.5, use_clipped_model_output=False)
    np.testing.assert_array_equal(stock_style, images(stock, eta=0.5))
    assert np.abs(images(ours, eta=0.5) - stock_style).max() > 1e-2


@pytest.fixture(scope="module")
def learned_variance_unet():
    return tiny_unet(channels=3, learned_variance=True)


@pytest.mark.parametrize(
    "scheduler, reads_variance",
    [
        (DDPMScheduler(reverse_variance="learned_range"), True),
        (DDIMScheduler(reverse_variance="learned_range"), True),
        (diffusers.DDPMScheduler(variance_type="learned_range"), True),
        (DDIMScheduler(), False),  # η only: the prediction channels alone
        (diffusers.DPMSolverMultistepScheduler(), False),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, bool) else None,
)
def test_a_learned_variance_reaches_only_the_schedulers_that_read_it(learned_variance_unet, scheduler, reads_variance):
    channels = []
    step = scheduler.step

    @functools.wraps(step)  # the pipeline reads the step's signature
    def recording_step(model_output, *args, **kwargs):
        channels.append(model_output.shape[1])
        return step(model_output, *args, **kwargs)

    scheduler.step = recording_step
    make_pipeline(learned_variance_unet, scheduler)(num_inference_steps=2, output_type="latent")
    assert channels == [6 if reads_variance else 3] * 2


def test_a_half_precision_unet_samples_in_float32_close_to_full_precision(unet, tmp_path):
    make_pipeline(unet, DDIMScheduler()).save_pretrained(tmp_path)
    half = HFDDPMPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    reference = images(make_pipeline(unet, DDIMScheduler()))
    sample = images(half, output_type="latent")
    assert half.unet.dtype == torch.bfloat16 and sample.dtype == torch.float32
    # Same seed, same starting noise (drawn in float32); only the network evaluations are rounded (8-bit mantissa).
    assert np.abs(images(half) - reference).mean() < 0.03


def test_sampling_runs_the_unet_in_eval_mode_and_restores_its_mode():
    dropout_unet = diffusers.UNet2DModel.from_config({**tiny_unet(channels=3).config, "dropout": 0.5}).train()
    pipe = make_pipeline(dropout_unet, DDIMScheduler())
    np.testing.assert_array_equal(images(pipe), images(pipe))  # dropout would make these differ
    assert dropout_unet.training


def test_callbacks_follow_diffusers_conventions(pipe):
    # diffusers' PipelineTesterMixin.test_callback_inputs, pointed at HFDDPMPipeline.
    seen = []

    def zero_at_the_last_step(pipe, i, t, tensors):
        seen.append((i, sorted(tensors)))
        if i == pipe.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    names = pipe._callback_tensor_inputs
    assert names == ["latents", "pred_original_sample"]
    callback = {"callback_on_step_end": zero_at_the_last_step, "callback_on_step_end_tensor_inputs": names}
    output = images(pipe, output_type="latent", **callback)
    assert pipe.num_timesteps == 3 and seen == [(i, names) for i in range(3)] and output.abs().sum() == 0
    seen.clear()
    images(pipe, callback_on_step_end=zero_at_the_last_step)
    assert seen == [(i, ["latents"]) for i in range(3)]  # the default hands "latents" only


def test_a_diffusers_pipeline_callback_brings_its_tensor_names(pipe):
    class ZeroLatents(diffusers.callbacks.PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    for callback in (ZeroLatents(), diffusers.callbacks.MultiPipelineCallbacks([ZeroLatents()])):
        assert images(pipe, output_type="latent", callback_on_step_end=callback).abs().sum() == 0


def test_a_sample_turning_nan_names_the_step_and_the_cause():
    unet = tiny_unet(channels=3)
    with torch.no_grad():
        unet.conv_out.bias[0] = float("nan")
    with pytest.raises(
        NonFiniteSampleError, match=r"NaN or infinite at step 1 of 4 .*1 non-finite weights; load a checkpoint"
    ):
        make_pipeline(unet, DDPMScheduler())(num_inference_steps=4)


def test_a_sample_that_overflows_later_names_its_step(pipe):
    def overflow_at_the_second_step(pipe, i, t, tensors):
        return {"latents": tensors["latents"] * (1e39 if i == 1 else 1)}

    with pytest.raises(
        ValueError, match=r"at step 2 of 3 \(timestep 666\): the network's output or the step overflow"
    ):
        images(pipe, callback_on_step_end=overflow_at_the_second_step)


def test_the_progress_bar_counts_denoising_steps_and_can_be_turned_off(unet, capsys):
    pipe = HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe(batch_size=3, num_inference_steps=4, corrector_steps=1)
    assert "4/4" in capsys.readouterr().err  # steps, not images or network evaluations
    pipe.set_progress_bar_config(disable=True)
    pipe(num_inference_steps=2)
    assert capsys.readouterr().err == ""


NAN = float("nan")


@pytest.mark.parametrize(
    "scheduler, kwargs, match, before_sampling",
    [
        (DDIMScheduler(), {"corrector_steps": -1}, r"corrector_steps must be in \[0", True),
        (DDIMScheduler(), {"corrector_steps": 1, "corrector_snr": 0}, r"corrector_snr .* in \(0, inf\)", True),
        (DDIMScheduler(), {"corrector_steps": 1, "corrector_snr": NAN}, r"corrector_snr .* in \(0, inf\)", True),
        (diffusers.EulerDiscreteScheduler(), {"corrector_steps": 1}, "needs hfddpm's DDPMScheduler or DDIM", True),
        (DDIMScheduler(), {"callback_on_step_end_tensor_inputs": ["noise"]}, r"must be among \['latents'", True),
        (DDIMScheduler(), {"num_inference_steps": 1001}, r"num_inference_steps must be in \[1, 1000\]", True),
        (DDIMScheduler(), {"num_inference_steps": 0}, r"num_inference_steps must be in \[1, 1000\]", True),
        (DDIMScheduler(), {"eta": -0.1}, r"eta must be a finite number in \[0, 1\]", False),
        (DDIMScheduler(), {"eta": NAN}, r"eta must be a finite number in \[0, 1\]", False),
        (
            DDPMScheduler(reverse_variance="learned_range"),
            {},
            r"learned_range.* 2 × 3 output channels.*'fixed_small' or 'fixed_large'",
            False,
        ),
    ],
    ids=[
        "corrector_steps<0",
        "corrector_snr=0",
        "corrector_snr=nan",
        "corrector on a stock scheduler",
        "unknown callback tensor",
        "steps>T",
        "steps=0",
        "eta<0",
        "eta=nan",
        "learned variance on a fixed-variance UNet",
    ],
)
def test_a_call_that_would_sample_wrong_numbers_is_refused_in_one_line(
    unet, scheduler, kwargs, match, before_sampling
):
    calls = []
    hook = unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=match) as info:
            make_pipeline(unet, scheduler)(**{"num_inference_steps": 2, **kwargs})
    finally:
        hook.remove()
    assert "\n" not in str(info.value) and (calls == [] or not before_sampling)


@pytest.fixture(scope="module")
def conditional():
    """A class-conditional pipeline of three named classes (num_class_embeds 4: the last one means "no label")."""
    torch.manual_seed(0)
    unet = create_unet("tiny", in_channels=1, sample_size=8, num_class_embeds=4)
    pipe = HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(), id2label={0: "cat", 1: "dog", 2: "owl"})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_labels": ["cow"]}, r"unknown class name.*\['cow'\].*\['cat', 'dog', 'owl'\]"),
        ({"class_labels": [3]}, r"class label must be in \[0, 2\], got 3"),  # 3 would draw unconditional images
        ({"class_labels": [0, 1], "batch_size": 3}, "got 2 class_labels for batch_size=3: pass one label, or one"),
        ({"guidance_scale": 2.0}, "none were given: pass class_labels or drop it"),
    ],
)
def test_labels_that_would_draw_other_images_are_refused(conditional, kwargs, match):
    # Labels as ids or names, their folder, and guidance's own refusals are test_guidance.py's.
    with pytest.raises(ValueError, match=match):
        conditional(num_inference_steps=2, **kwargs)


def test_labels_for_an_unconditional_unet_and_names_for_classes_it_lacks_are_refused(unet):
    with pytest.raises(ValueError, match=r"this checkpoint is unconditional .*drop them"):
        make_pipeline(unet, DDIMScheduler())(class_labels=[0], num_inference_steps=2)
    with pytest.raises(ValueError, match=r"id2label must name the UNet's classes 0 to 2"):
        HFDDPMPipeline(unet=create_unet("tiny", num_class_embeds=4), scheduler=DDIMScheduler(), id2label={0: "a"})
    with pytest.raises(ValueError, match=r"id2label must name no class \(the UNet is unconditional\)"):
        HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(), id2label={0: "a"})


def test_a_student_samples_at_its_own_step_count_which_its_folder_keeps(unet, tmp_path):
    student = HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(), default_num_inference_steps=2)
    student.set_progress_bar_config(disable=True)
    student(output_type="latent")
    assert student.num_timesteps == 2
    student(num_inference_steps=3, output_type="latent")
    assert student.num_timesteps == 3
    student.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["default_num_inference_steps"] == 2
    loaded = HFDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    loaded(output_type="latent")
    assert loaded.num_timesteps == 2 and loaded.inference_steps() == 2
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 1000\], got 0"):  # not 50 steps
        HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler(), default_num_inference_steps=0)()


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "scheduler, stock_pipeline",
    [
        (DDPMScheduler(reverse_variance="fixed_large", timestep_spacing="trailing"), "DDPMPipeline"),
        (DDIMScheduler(beta_schedule="cosine", reverse_variance="fixed_small"), "DDIMPipeline"),
    ],
)
def test_save_writes_the_stock_layout_and_reloads_exactly(unet, tmp_path, scheduler, stock_pipeline):
    pipe = make_pipeline(unet, scheduler)
    before = images(pipe, eta=1.0)
    pipe.save_pretrained(tmp_path)
    assert files_in(tmp_path) == {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    }
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == stock_pipeline and index["_hfddpm_version"] == hfddpm.__version__
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == [
        "diffusers",
        type(scheduler).__name__,
    ]
    assert "default_num_inference_steps" not in index and "id2label" not in index  # as stock writes it
    plain = diffusers.UNet2DModel.from_pretrained(tmp_path / "unet")  # unet/ is a plain UNet2DModel folder
    weights = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(
        torch.equal(weights[k], v) and torch.equal(plain.state_dict()[k], v) for k, v in unet.state_dict().items()
    )

    loaded = HFDDPMPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is type(scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(scheduler.config)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(images(loaded, eta=1.0), before)


def test_stock_diffusers_loads_an_hfddpm_folder_as_its_own_pipeline(unet, tmp_path):
    make_pipeline(unet, DDIMScheduler()).save_pretrained(tmp_path / "ddim")
    stock = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "ddim")
    assert type(stock) is diffusers.DDIMPipeline and type(stock.scheduler) is diffusers.DDIMScheduler
    stock.set_progress_bar_config(disable=True)
    ours = HFDDPMPipeline.from_pretrained(tmp_path / "ddim")
    ours.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(images(stock), images(ours, use_clipped_model_output=False))
    # An hfddpm-only option reaches stock diffusers as its nearest stock choice.
    make_pipeline(unet, DDPMScheduler(reverse_variance="fixed_large")).save_pretrained(tmp_path / "ddpm")
    stock = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "ddpm")
    assert type(stock) is diffusers.DDPMPipeline and stock.scheduler.config.variance_type == "fixed_large"


@pytest.mark.parametrize(
    "stock_pipeline_class, stock_scheduler, hfddpm_scheduler",
    [
        (diffusers.DDPMPipeline, diffusers.DDPMScheduler(variance_type="fixed_large"), DDPMScheduler),
        (diffusers.DDIMPipeline, diffusers.DDIMScheduler(prediction_type="v_prediction"), DDIMScheduler),
    ],
)
def test_a_folder_written_by_stock_diffusers_samples_as_stock(
    unet, tmp_path, stock_pipeline_class, stock_scheduler, hfddpm_scheduler
):
    stock_pipeline_class(unet=unet, scheduler=stock_scheduler).save_pretrained(tmp_path)
    ours = HFDDPMPipeline.from_pretrained(tmp_path)
    ours.set_progress_bar_config(disable=True)
    assert type(ours.scheduler) is hfddpm_scheduler
    stock = stock_pipeline_class.from_pretrained(tmp_path)
    stock.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(images(ours, use_clipped_model_output=False), images(stock))


def test_the_google_ddpm_cifar10_layout_loads_and_samples_as_stock(tmp_path):
    """A folder laid out like google/ddpm-cifar10-32 (configs of diffusers 0.1–0.5, with their keys), tiny."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "scheduler").mkdir()
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1", "scheduler": ["diffusers", "DDPMScheduler"],
             "unet": ["diffusers", "UNet2DModel"]}  # fmt: skip
    scheduler = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
                 "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
                 "trained_betas": None, "variance_type": "fixed_large"}  # fmt: skip
    unet_config = {"_class_name": "UNet2DModel", "_diffusers_version": "0.5.0.dev0", "act_fn": "silu",
                   "attention_head_dim": None, "block_out_channels": [16, 32], "center_input_sample": False,
                   "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "downsample_padding": 0,
                   "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 1,
                   "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 8, "out_channels": 3,
                   "sample_size": 16, "time_embedding_type": "positional",
                   "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}  # fmt: skip
    for path, content in [("model_index.json", index), ("scheduler/scheduler_config.json", scheduler),
                          ("unet/config.json", unet_config)]:  # fmt: skip
        (tmp_path / path).write_text(json.dumps(content))
    torch.manual_seed(0)
    weights = diffusers.UNet2DModel.from_config(unet_config).state_dict()
    save_file(weights, tmp_path / "unet" / "diffusion_pytorch_model.safetensors")

    ours = HFDDPMPipeline.from_pretrained(tmp_path)
    assert type(ours.scheduler) is DDPMScheduler and ours.scheduler.config.variance_type == "fixed_large"
    assert ours.scheduler.config.timestep_spacing == "leading"  # a key the old config lacks takes the default
    stock = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    sample = images(ours, batch_size=1, num_inference_steps=2)
    assert sample.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(sample, images(stock, batch_size=1, num_inference_steps=2))


def test_a_scheduler_passed_to_from_pretrained_replaces_the_saved_one(unet, tmp_path):
    make_pipeline(unet, DDPMScheduler()).save_pretrained(tmp_path)
    solver = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert HFDDPMPipeline.from_pretrained(tmp_path, scheduler=solver).scheduler is solver
