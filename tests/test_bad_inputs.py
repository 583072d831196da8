"""The catalogue of bad inputs the library refuses at its public entry points, each in one line that names the
problem and the fix or the valid values (the table in the docs lists the messages)."""

import re

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from huggingface_hub import constants

from hfddpm import UNET_PRESETS, DDIMScheduler, DDPMScheduler, HFDDPMPipeline, create_unet, unet_config
from hfddpm.hub import HubError, check_repo_id, resolve_token

from .conftest import make_pipeline, tiny_unet


def _pipe(unet=None, **scheduler_options) -> HFDDPMPipeline:
    return make_pipeline(unet or tiny_unet(channels=1), DDPMScheduler(**scheduler_options))


def _unet_with_out_channels(out_channels: int) -> UNet2DModel:
    return UNet2DModel(**{**unet_config("tiny", in_channels=1, sample_size=8), "out_channels": out_channels})


STEPS = "num_inference_steps must be in [1, 1000]"

# (id, call, exception type, keyword naming the problem, keyword naming the fix or the valid values)
CASES = [
    (
        "ddpm prediction_type",
        lambda: DDPMScheduler(prediction_type="noise"),
        ValueError,
        "prediction_type",
        "v_prediction",
    ),
    (
        "ddim prediction_type",
        lambda: DDIMScheduler(prediction_type="noise"),
        ValueError,
        "prediction_type",
        "v_prediction",
    ),
    (
        "ddpm reverse_variance",
        lambda: DDPMScheduler(reverse_variance="small"),
        ValueError,
        "reverse_variance",
        "learned_range",
    ),
    (
        "ddim reverse_variance",
        lambda: DDIMScheduler(reverse_variance="small"),
        ValueError,
        "reverse_variance",
        "analytic",
    ),
    (
        "ddpm variance_type",
        lambda: DDPMScheduler(variance_type="fixed"),
        ValueError,
        "variance_type",
        "fixed_small_log",
    ),
    ("ddpm beta_schedule", lambda: DDPMScheduler(beta_schedule="quadratic"), ValueError, "beta_schedule", "cosine"),
    (
        "ddim beta_schedule",
        lambda: DDIMScheduler(beta_schedule="sigmoid"),
        ValueError,
        "beta_schedule",
        "squaredcos_cap_v2",
    ),
    (
        "ddpm timestep_spacing",
        lambda: DDPMScheduler(timestep_spacing="uniform"),
        ValueError,
        "timestep_spacing",
        "trailing",
    ),
    (
        "ddim timestep_spacing",
        lambda: DDIMScheduler(timestep_spacing="uniform"),
        ValueError,
        "timestep_spacing",
        "quadratic",
    ),
    ("ddpm set_timesteps(0)", lambda: DDPMScheduler().set_timesteps(0), ValueError, STEPS, "got 0"),
    ("ddpm set_timesteps(-3)", lambda: DDPMScheduler().set_timesteps(-3), ValueError, STEPS, "got -3"),
    ("ddpm set_timesteps(T + 1)", lambda: DDPMScheduler().set_timesteps(1001), ValueError, STEPS, "got 1001"),
    ("ddim set_timesteps(0)", lambda: DDIMScheduler().set_timesteps(0), ValueError, STEPS, "got 0"),
    ("ddim set_timesteps(-3)", lambda: DDIMScheduler().set_timesteps(-3), ValueError, STEPS, "got -3"),
    ("ddim set_timesteps(T + 1)", lambda: DDIMScheduler().set_timesteps(1001), ValueError, STEPS, "got 1001"),
    ("pipeline batch_size=0", lambda: _pipe()(batch_size=0), ValueError, "batch_size", "positive integer"),
    ("pipeline batch_size=True", lambda: _pipe()(batch_size=True), TypeError, "batch_size", "must be an integer"),
    (
        "pipeline generator list of the wrong length",
        lambda: _pipe()(batch_size=3, generator=[torch.Generator(), torch.Generator()]),
        ValueError,
        "got 2 generators for batch_size=3",
        "one per image",
    ),
    (
        "pipeline num_inference_steps=0",
        lambda: _pipe()(num_inference_steps=0),
        ValueError,
        "num_inference_steps",
        "[1, 1000]",
    ),
    (
        "pipeline num_inference_steps>T",
        lambda: _pipe()(num_inference_steps=1001),
        ValueError,
        "num_inference_steps",
        "[1, 1000]",
    ),
    ("pipeline output_type", lambda: _pipe()(output_type="jpeg"), ValueError, "output_type", "'pil', 'np', 'pt'"),
    ("pipeline eta<0", lambda: _pipe()(eta=-1), ValueError, "eta must be a finite number in [0, 1]", "deterministic"),
    (
        "pipeline learned-variance scheduler on a fixed-variance unet",
        lambda: _pipe(reverse_variance="learned_range")(num_inference_steps=2),
        ValueError,
        "learned variance",
        "fixed_small",
    ),
    (
        "pipeline unet out_channels neither C nor 2C",
        lambda: _pipe(_unet_with_out_channels(3))(num_inference_steps=2),
        ValueError,
        "out_channels=3 for in_channels=1",
        "learned_variance",
    ),
    (
        "create_unet size not divisible",
        lambda: create_unet("tiny", sample_size=9),
        ValueError,
        "not divisible by 2",
        "8 or 10",
    ),
    (
        "create_unet --resolution 10",
        lambda: create_unet("digits", sample_size=10),
        ValueError,
        "not divisible by 4",
        "8 or 12",
    ),
    (
        "create_unet size below the factor",
        lambda: create_unet("ddpm-cifar10-32", sample_size=5),
        ValueError,
        "by 8",
        "such as 8",
    ),
    ("create_unet unknown preset", lambda: create_unet("cifar"), ValueError, "unknown", "ddpm-cifar10-32"),
    (
        "hub malformed repo id",
        lambda: check_repo_id("not a repo id!"),
        ValueError,
        "not a hub repository id",
        "user/name",
    ),
    (
        "hub missing token",
        lambda: resolve_token(None, "outputs/run"),
        HubError,
        "no hugging face token",
        "hf auth login",
    ),
    (
        "from_pretrained of a missing path",
        lambda: HFDDPMPipeline.from_pretrained("/nonexistent/outputs/ddpm-digits"),
        FileNotFoundError,
        "neither a pipeline folder",
        "check the path",
    ),
]


@pytest.mark.parametrize("call, error_type, problem, fix", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_library_refuses_bad_input_in_one_line(call, error_type, problem, fix, monkeypatch, tmp_path):
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # no token anywhere, for the hub case
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(error_type) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert problem in message.lower() and fix in message.lower(), message


NAN = float("nan")
BETAS = "must be a finite number in (0, 1)"


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"beta_start": NAN}, ValueError, f"beta_start {BETAS}, got nan"),
        ({"beta_end": float("inf")}, ValueError, f"beta_end {BETAS}, got inf"),
        ({"beta_start": -0.001}, ValueError, f"beta_start {BETAS}, got -0.001"),
        ({"beta_start": 0.0}, ValueError, f"beta_start {BETAS}, got 0.0"),
        ({"beta_end": 1.0}, ValueError, f"beta_end {BETAS}, got 1.0"),
        ({"beta_start": 0.1, "beta_end": 0.01}, ValueError, "beta_start must not exceed beta_end"),
        ({"beta_schedule": "scaled_linear", "beta_start": NAN}, ValueError, f"beta_start {BETAS}, got nan"),
        ({"beta_start": "0.1"}, TypeError, "beta_start must be a number, got '0.1' (str)"),
        ({"num_train_timesteps": 0}, ValueError, "num_train_timesteps must be a positive integer, got 0"),
        ({"num_train_timesteps": True}, TypeError, "num_train_timesteps must be an integer, got True (bool)"),
        ({"num_train_timesteps": 10.0}, TypeError, "num_train_timesteps must be an integer, got 10.0 (float)"),
        ({"trained_betas": [0.1, NAN]}, ValueError, "trained_betas needs one β per training timestep"),
        ({"num_train_timesteps": 2, "trained_betas": [0.1, NAN]}, ValueError, "(0, 1), got nan at timestep 1"),
        ({"num_train_timesteps": 2, "trained_betas": [0.0, 0.1]}, ValueError, "(0, 1), got 0.0 at timestep 0"),
        ({"num_train_timesteps": 2, "trained_betas": [0.1, 1.0]}, ValueError, "(0, 1), got 1.0 at timestep 1"),
        ({"num_train_timesteps": 2, "trained_betas": ["a", 0.1]}, TypeError, "trained_betas must be a 1-D sequence"),
        (
            {"num_train_timesteps": 2, "reverse_variance": "analytic", "analytic_gamma": [1.0, NAN]},
            ValueError,
            "analytic_gamma[1] must be a finite number in [0, inf), got nan",
        ),
    ],
)
def test_schedulers_refuse_a_broken_noise_schedule(cls, options, error, message):
    with pytest.raises(error) as info:
        cls(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("steps", [True, 2.0, "4"], ids=repr)
def test_set_timesteps_refuses_non_integer_counts(cls, steps):
    with pytest.raises(TypeError) as info:
        cls().set_timesteps(steps)
    assert str(info.value) == f"num_inference_steps must be an integer, got {steps!r} ({type(steps).__name__})"


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_set_timesteps_takes_numpy_integers(cls):
    scheduler = cls()
    scheduler.set_timesteps(np.int64(4))
    assert scheduler.num_inference_steps == 4 and type(scheduler.num_inference_steps) is int


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(
    "timesteps, error, message",
    [
        (torch.tensor([-1]), ValueError, "add_noise's timesteps must be in [0, 999], got values from -1 to -1"),
        (torch.tensor([3, 1000]), ValueError, "add_noise's timesteps must be in [0, 999], got values from 3 to 1000"),
        (torch.tensor([1.5]), TypeError, "add_noise's timesteps must be an integer tensor, got dtype torch.float32"),
    ],
)
def test_add_noise_refuses_timesteps_outside_the_schedule(cls, timesteps, error, message):
    x = torch.zeros(len(timesteps), 1, 2, 2)
    with pytest.raises(error) as info:
        cls().add_noise(x, x, timesteps)
    assert str(info.value) == message


@pytest.mark.parametrize("eta", [NAN, -0.5, 1.5])
def test_ddim_step_refuses_an_eta_outside_0_and_1(eta):
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\] \(0 is deterministic DDIM"):
        scheduler.step(x, scheduler.timesteps[0], x, eta=eta)


# (id, overrides of create_unet("tiny", ...), exception type, the exact line)
UNET_CONFIG_CASES = [
    (
        "sample_size bool",
        {"sample_size": True},
        TypeError,
        "sample_size in {} must be a size or [height, width], got True (bool)",
    ),
    (
        "sample_size string",
        {"sample_size": "8"},
        TypeError,
        "sample_size in {} must be a size or [height, width], got '8' (str)",
    ),
    (
        "sample_size 10**9",
        {"sample_size": 10**9},
        ValueError,
        "sample_size in {} must be in [1, 16384], got 1000000000 (int)",
    ),
    (
        "sample_size 0",
        {"sample_size": [0, 8]},
        ValueError,
        "sample_size in {} must be in [1, 16384], got [0, 8] (list)",
    ),
    (
        "block_out_channels huge",
        {"block_out_channels": (10**9, 10**9)},
        ValueError,
        "block_out_channels in {} must be in [1, 65536], got (1000000000, 1000000000) (tuple)",
    ),
    (
        "block_out_channels number",
        {"block_out_channels": 16},
        TypeError,
        "block_out_channels in {} must be a list of counts, got 16 (int)",
    ),
    (
        "in_channels string",
        {"in_channels": "3"},
        TypeError,
        "in_channels in {} must be a positive integer, got '3' (str)",
    ),
    (
        "in_channels bool",
        {"in_channels": True},
        TypeError,
        "in_channels in {} must be a positive integer, got True (bool)",
    ),
    (
        "layers_per_block float",
        {"layers_per_block": 2.0},
        TypeError,
        "layers_per_block in {} must be a positive integer, got 2.0 (float)",
    ),
    (
        "layers_per_block negative",
        {"layers_per_block": -1},
        ValueError,
        "layers_per_block in {} must be in [1, 65536], got -1 (int)",
    ),
    (
        "dropout NaN",
        {"dropout": float("nan")},
        ValueError,
        "dropout in {} must be a finite number >= 0, got nan (float)",
    ),
    ("dropout list", {"dropout": [0.1]}, TypeError, "dropout in {} must be a number, got [0.1] (list)"),
    (
        "switch as string",
        {"flip_sin_to_cos": "yes"},
        TypeError,
        "flip_sin_to_cos in {} must be a switch, true or false, got 'yes' (str)",
    ),
    (
        "block types too few",
        {"down_block_types": ("DownBlock2D",)},
        ValueError,
        "down_block_types in {} must be 2 names, one per block_out_channels, got ('DownBlock2D',) (tuple)",
    ),
    (
        "unknown block type",
        {"up_block_types": ("NoBlock", "UpBlock2D")},
        ValueError,
        "{} does not describe a UNet2DModel diffusers can build (NoBlock does not exist.); fix it",
    ),
]


@pytest.mark.parametrize(
    "overrides, error_type, line", [case[1:] for case in UNET_CONFIG_CASES], ids=[c[0] for c in UNET_CONFIG_CASES]
)
def test_a_unet_config_of_the_wrong_kind_or_an_absurd_size_is_refused_before_allocation(overrides, error_type, line):
    with pytest.raises(error_type, match=f"^{re.escape(line.format(repr('tiny').join(['UNet preset ', ''])))}$"):
        create_unet("tiny", **overrides)


def test_a_unet_of_too_many_parameters_is_refused_before_allocation():
    config = {**UNET_PRESETS["tiny"], "out_channels": 3, "block_out_channels": (16384, 16384)}
    with torch.device("meta"):  # the count, measured without allocating
        count = sum(p.numel() for p in UNet2DModel(**config).parameters())
    assert count > 10**10
    line = f"UNet preset 'tiny' describes a UNet of {count:.3g} parameters, more than hfddpm builds (1e+10); "
    with pytest.raises(ValueError, match=f"^{re.escape(line)}check block_out_channels and layers_per_block$"):
        create_unet("tiny", block_out_channels=(16384, 16384))


@pytest.mark.parametrize(
    "call, error_type, line",
    [
        (lambda: create_unet(["tiny"]), TypeError, "the UNet preset is a name such as 'digits', got ['tiny'] (list)"),
        (
            lambda: create_unet("tiny", learned_variance="yes"),
            TypeError,
            "learned_variance must be True or False, got 'yes'",
        ),
    ],
    ids=["preset list", "learned_variance string"],
)
def test_create_unet_refuses_arguments_of_the_wrong_type(call, error_type, line):
    with pytest.raises(error_type, match=f"^{re.escape(line)}$"):
        call()


def test_numpy_integers_are_sizes_and_counts():
    unet = create_unet(
        "tiny", sample_size=np.int64(8), in_channels=np.int32(1), block_out_channels=(np.int64(8), np.int64(16))
    )
    assert unet.config.sample_size == 8 and type(unet.config.sample_size) is int
    assert list(unet.config.block_out_channels) == [8, 16] and unet.config.out_channels == 1
