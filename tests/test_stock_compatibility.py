"""hfddpm against stock diffusers as the oracle: with no hfddpm option set its schedulers behave as stock, configs
travel between the two in both directions, and `HFDDPMPipeline` draws stock's images and calls stock schedulers in
diffusers' order.

The scheduler tests reproduce the checks of diffusers' own tests/schedulers/test_scheduler_ddpm.py,
test_scheduler_ddim.py and test_schedulers.py (configs, save/load round trips, `test_compatibles`,
`test_from_pretrained`, off-grid and custom timesteps, full loops) as differential tests. CI runs this file with
the newest and the oldest diffusers that pyproject.toml accepts.
"""

import inspect
import json

import diffusers
import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser

from .conftest import gaussian_gamma, make_pipeline, scheduler_loop, tiny_unet

# KDPM2's schedulers call NumPy on tensors, which NumPy 2 warns about once per training timestep.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

DDPM_CONFIGS = [
    {},
    {"num_train_timesteps": 100},
    {"beta_start": 0.001, "beta_end": 0.2},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "scaled_linear"},
    {"beta_schedule": "sigmoid"},
    {"trained_betas": torch.linspace(1e-4, 0.05, 1000).tolist()},
    {"variance_type": "fixed_large"},
    # Not {"variance_type": "other"}: stock silently treats unknown names as fixed_small, hfddpm refuses them
    # (test_gaussian_diffusion.py).
    {"variance_type": "fixed_small_log"},
    {"variance_type": "learned_range"},
    {"clip_sample": False},
    {"prediction_type": "sample"},
    {"prediction_type": "v_prediction"},
    {"thresholding": True, "sample_max_value": 0.5, "prediction_type": "v_prediction"},
    {"thresholding": True, "sample_max_value": 2.0},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
    {"steps_offset": 1},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
]

DDIM_CONFIGS = [
    {},
    {"num_train_timesteps": 500},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "scaled_linear"},
    {"clip_sample": False},
    {"set_alpha_to_one": False, "beta_start": 0.01},
    {"steps_offset": 1},
    {"prediction_type": "sample"},
    {"prediction_type": "v_prediction"},
    {"thresholding": True, "sample_max_value": 0.5},
    {"thresholding": True, "sample_max_value": 2.0, "prediction_type": "v_prediction"},
    {"timestep_spacing": "trailing"},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
]


def config_id(config: dict) -> str:
    return ",".join(f"{key}={value}"[:30] for key, value in config.items()) or "defaults"


def variance_channels(config: dict) -> float | None:
    """The learned-variance output a loop appends for a config that reads one."""
    return 0.3 if "learned" in str(config.get("variance_type")) else None


# The whole training chain (None) for a few configs; every config at two step counts.
DDPM_LOOPS = [(config, steps) for config in DDPM_CONFIGS for steps in (10, 7)] + [
    (config, None) for config in ({}, {"variance_type": "fixed_large"}, {"prediction_type": "v_prediction"})
]


@pytest.mark.parametrize(
    "config, num_inference_steps", DDPM_LOOPS, ids=lambda v: config_id(v) if isinstance(v, dict) else str(v)
)
def test_ddpm_loop_is_stock(config, num_inference_steps):
    ours, stock = DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    ours_out = scheduler_loop(ours, num_inference_steps, variance_channels(config))
    stock_out = scheduler_loop(stock, num_inference_steps, variance_channels(config))
    assert torch.equal(ours.timesteps, stock.timesteps)
    last = len(ours_out) - 1
    for step, ((a, a0), (b, b0)) in enumerate(zip(ours_out, stock_out, strict=True)):
        if step == last and ours.timesteps[-1] > 0:
            # Stock's defect, not copied: it adds noise to x_0 whenever the last timestep is above 0 ("trailing",
            # steps_offset=1); hfddpm returns stock's own mean there, which is x̂_0
            # (test_gaussian_diffusion.py::test_the_step_to_x0_adds_no_noise).
            b = b0
        # Bit for bit; NaN where stock gives NaN (β_end = 0.2 drives ᾱ to 0 in float32).
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(a0, b0, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("config", DDIM_CONFIGS, ids=config_id)
@pytest.mark.parametrize("num_inference_steps, eta", [(10, 0.0), (50, 0.5), (20, 1.0)])
def test_ddim_loop_is_stock_where_the_step_grid_agrees(config, num_inference_steps, eta):
    ours, stock = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    for use_clipped in (False, True):
        ours_out = scheduler_loop(ours, num_inference_steps, eta=eta, use_clipped_model_output=use_clipped)
        stock_out = scheduler_loop(stock, num_inference_steps, eta=eta, use_clipped_model_output=use_clipped)
        assert torch.equal(ours.timesteps, stock.timesteps)
        for (a, a0), (b, b0) in zip(ours_out, stock_out, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float32 rounding of equal formulas
            torch.testing.assert_close(a0, b0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "time_step, num_inference_steps, eta", [(1, 50, 0.0), (10, 50, 0.5), (49, 50, 1.0), (1, 10, 0)]
)
def test_ddim_off_grid_timesteps_keep_the_stock_rule(time_step, num_inference_steps, eta):
    # diffusers' test_time_indices/test_eta call step() at timesteps that are not on the schedule.
    sample = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    results = []
    for cls in (DDIMScheduler, diffusers.DDIMScheduler):
        scheduler = cls()
        scheduler.set_timesteps(num_inference_steps)
        results.append(
            scheduler.step(0.1 * sample, time_step, sample, eta=eta, generator=torch.manual_seed(0)).prev_sample
        )
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_ddim_variance_noise_argument_is_stock():
    sample, noise = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    results = []
    for cls in (DDIMScheduler, diffusers.DDIMScheduler):
        scheduler = cls()
        scheduler.set_timesteps(10)
        results.append(scheduler.step(0.1 * sample, 900, sample, eta=0.7, variance_noise=noise).prev_sample)
        with pytest.raises(ValueError, match="Cannot pass both generator and variance_noise"):
            scheduler.step(0.1 * sample, 900, sample, eta=0.7, variance_noise=noise, generator=torch.manual_seed(0))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize(
    "ours_cls, stock_cls, config",
    [(DDPMScheduler, diffusers.DDPMScheduler, c) for c in DDPM_CONFIGS]
    + [(DDIMScheduler, diffusers.DDIMScheduler, c) for c in DDIM_CONFIGS],
    ids=lambda value: config_id(value) if isinstance(value, dict) else value.__module__.split(".")[0],
)
def test_forward_process_and_helpers_are_stock(ours_cls, stock_cls, config):
    ours, stock = ours_cls(**config), stock_cls(**config)
    assert torch.equal(ours.betas, stock.betas) and torch.equal(ours.alphas_cumprod, stock.alphas_cumprod)
    assert len(ours) == len(stock) and ours.init_noise_sigma == stock.init_noise_sigma
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 37, len(stock) - 1])
    assert torch.equal(ours.add_noise(x0, noise, t), stock.add_noise(x0, noise, t))
    assert torch.equal(ours.get_velocity(x0, noise, t), stock.get_velocity(x0, noise, t))
    assert torch.equal(ours.scale_model_input(x0, 5), stock.scale_model_input(x0, 5))
    public = {k: v for k, v in stock.config.items() if not k.startswith("_")}
    assert {k: v for k, v in ours.config.items() if k in public} == public


def test_ddpm_get_variance_values_from_diffusers_tests():
    # diffusers' test_variance, through the private method it calls.
    for scheduler in (DDPMScheduler(), diffusers.DDPMScheduler()):
        assert scheduler._get_variance(0).item() == pytest.approx(0.0, abs=1e-5)
        assert scheduler._get_variance(487).item() == pytest.approx(0.00979, abs=1e-5)
        assert scheduler._get_variance(999).item() == pytest.approx(0.02, abs=1e-5)


def test_ddpm_custom_timesteps_are_stock():
    scheduler = DDPMScheduler()
    scheduler.set_timesteps(timesteps=[100, 87, 50, 1, 0])
    assert [int(scheduler.previous_timestep(t)) for t in scheduler.timesteps] == [87, 50, 1, 0, -1]
    with pytest.raises(ValueError, match="Can only pass one"):
        scheduler.set_timesteps(num_inference_steps=5, timesteps=[100, 87, 50, 1, 0])


@pytest.mark.parametrize(
    "timesteps",
    [np.array([900, 500, 0]), torch.tensor([900.0, 500.0, 0.0]), [900.0, 500, 0]],
    ids=["numpy integers", "a float tensor (another scheduler's)", "whole floats"],
)
def test_custom_timesteps_of_whole_numbers_are_integers(timesteps):
    ours, stock = DDPMScheduler(), diffusers.DDPMScheduler()
    ours.set_timesteps(timesteps=timesteps)
    stock.set_timesteps(timesteps=timesteps)
    assert ours.timesteps.tolist() == stock.timesteps.tolist() == [900, 500, 0]


def test_ddim_steps_offset_timesteps_from_diffusers_tests():
    scheduler = DDIMScheduler(steps_offset=1)
    scheduler.set_timesteps(5)
    assert torch.equal(scheduler.timesteps, torch.LongTensor([801, 601, 401, 201, 1]))


# The reverse-variance option against stock's variance_type


def test_fixed_small_is_stock_fixed_small():
    ours = scheduler_loop(DDPMScheduler(reverse_variance="fixed_small"), 10)
    stock = scheduler_loop(diffusers.DDPMScheduler(variance_type="fixed_small"), 10)
    for (a, _), (b, _) in zip(ours, stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float32 rounding of equal formulas


def test_fixed_large_is_stock_fixed_large_but_for_a_noiseless_last_step():
    # "leading" ends at t = 0, where stock adds no noise either: the chains agree throughout.
    ours = scheduler_loop(DDPMScheduler(reverse_variance="fixed_large"), 10)
    stock = scheduler_loop(diffusers.DDPMScheduler(variance_type="fixed_large"), 10)
    for (a, _), (b, _) in zip(ours, stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # "trailing" ends at t = 99: stock adds noise of variance β_{99,−1} = 1 − ᾱ_99 ≈ 0.1 to the final images;
    # hfddpm does not. 768 values: the measured spread is within 10 % of that standard deviation.
    config = {"timestep_spacing": "trailing", "clip_sample": False}
    ours = scheduler_loop(DDPMScheduler(reverse_variance="fixed_large", **config), 10)
    stock = scheduler_loop(diffusers.DDPMScheduler(variance_type="fixed_large", **config), 10)
    for (a, _), (b, _) in zip(ours[:-1], stock[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    expected = (1 - DDPMScheduler().alphas_cumprod[99]) ** 0.5
    assert (ours[-1][0] - stock[-1][0]).std().item() == pytest.approx(expected.item(), rel=0.1)


@pytest.mark.parametrize("name, channels", [("fixed_small", None), ("learned", -4.0), ("learned_range", 0.3)])
def test_ddim_with_eta_zero_stays_stock_ddim_whatever_the_choice(name, channels):
    # A DDPM config converted with DDIMScheduler.from_config carries its reverse_variance: DDIM must stay DDIM.
    ours = scheduler_loop(DDIMScheduler(reverse_variance=name), 10, channels, eta=0.0)
    stock = scheduler_loop(diffusers.DDIMScheduler(), 10, eta=0.0)
    for (a, _), (b, _) in zip(ours, stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ddim_fixed_small_is_the_stock_eta_family():
    # σ² = η² β̃_{t,s}: stock's λ², except that the step to x_0 adds no noise (with set_alpha_to_one=False and a
    # schedule ending at t = 99 stock adds η² β̃_{99,−1} > 0 there).
    config = {"set_alpha_to_one": False, "timestep_spacing": "trailing", "clip_sample": False}
    ours = scheduler_loop(DDIMScheduler(reverse_variance="fixed_small", **config), 10, eta=0.5)
    stock = scheduler_loop(diffusers.DDIMScheduler(**config), 10, eta=0.5)
    for (a, _), (b, _) in zip(ours[:-1], stock[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours[-1][0], stock[-1][0])


def test_from_config_with_a_variance_type_replaces_the_configs_reverse_variance(tmp_path):
    DDPMScheduler(reverse_variance="fixed_small").save_pretrained(tmp_path)
    saved = DDPMScheduler.load_config(tmp_path)
    # Naming a stock variance_type decides the step: β here, not the config's β̃ kept silently.
    expected = scheduler_loop(DDPMScheduler(reverse_variance="fixed_large"), 10)
    for large in (
        DDPMScheduler.from_config(saved, variance_type="fixed_large"),
        DDPMScheduler.from_pretrained(tmp_path, variance_type="fixed_large_log"),
    ):
        assert (large.config.reverse_variance, large.config.variance_type) == ("fixed_large", "fixed_large")
        steps = scheduler_loop(large, 10)
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(steps, expected, strict=True))
    assert not torch.equal(steps[0][0], scheduler_loop(DDPMScheduler.from_config(saved), 10)[0][0])
    # Stock's "learned" reads σ², which no reverse_variance does: the config's reverse_variance goes.
    learned = DDPMScheduler.from_config(saved, variance_type="learned")
    assert learned.config.get("reverse_variance") is None and learned.config.variance_type == "learned"
    # Naming reverse_variance syncs variance_type; a stock config keeps its variance_type as stock's.
    synced = DDPMScheduler.from_config(
        DDPMScheduler(variance_type="fixed_large").config, reverse_variance="learned_range"
    )
    assert (synced.config.reverse_variance, synced.config.variance_type) == ("learned_range", "learned_range")
    stock = DDPMScheduler.from_config(DDPMScheduler().config, variance_type="fixed_large")
    assert stock.config.get("reverse_variance") is None and stock.config.variance_type == "fixed_large"


@pytest.mark.parametrize(
    "build",
    [
        lambda: DDPMScheduler(variance_type="fixed_large", reverse_variance="fixed_small"),
        lambda: DDPMScheduler(
            variance_type="fixed_small_log", reverse_variance="analytic", analytic_gamma=[0.5] * 1000
        ),
        lambda: DDPMScheduler.from_config(
            DDPMScheduler().config, variance_type="fixed_small", reverse_variance="learned"
        ),
    ],
    ids=["constructor", "analytic", "from_config"],
)
def test_disagreeing_variance_type_and_reverse_variance_are_refused(build):
    with pytest.raises(ValueError, match=r"variance_type='\w+' and reverse_variance='\w+' disagree; pass reverse_"):
        build()


def test_agreeing_variance_type_and_reverse_variance_are_taken():
    # The stock spelling of the same variance, and analytic's nearest stock choice, β̃.
    large = DDPMScheduler(variance_type="fixed_large_log", reverse_variance="fixed_large")
    assert (large.config.reverse_variance, large.config.variance_type) == ("fixed_large", "fixed_large")
    analytic = DDPMScheduler(variance_type="fixed_small", reverse_variance="analytic", analytic_gamma=[0.5] * 1000)
    assert analytic.config.variance_type == "fixed_small"


# Configs: saved, loaded and converted


@pytest.mark.parametrize(
    "ours_cls, stock_cls", [(DDPMScheduler, diffusers.DDPMScheduler), (DDIMScheduler, diffusers.DDIMScheduler)]
)
def test_saved_config_loads_in_both_directions(tmp_path, ours_cls, stock_cls):
    ours = ours_cls(beta_schedule="cosine", prediction_type="v_prediction", timestep_spacing="trailing")
    ours.save_config(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == stock_cls.__name__
    assert "reverse_variance" not in saved  # unset hfddpm options are not written: stock loads without a warning
    reloaded = ours_cls.from_pretrained(tmp_path / "ours")
    public = {k: v for k, v in ours.config.items() if not k.startswith("_")}
    assert {k: v for k, v in reloaded.config.items() if not k.startswith("_")} == public
    stock = stock_cls.from_pretrained(tmp_path / "ours")
    assert torch.equal(stock.alphas_cumprod, ours.alphas_cumprod)
    stock.save_config(tmp_path / "stock")
    assert ours_cls.from_pretrained(tmp_path / "stock").config.beta_schedule == "squaredcos_cap_v2"


def test_options_survive_save_load_and_reach_stock_as_nearest_choice(tmp_path):
    ours = DDPMScheduler(reverse_variance="fixed_large")
    assert ours.config.variance_type == "fixed_large"
    ours.save_config(tmp_path)
    assert DDPMScheduler.from_pretrained(tmp_path).config.reverse_variance == "fixed_large"
    assert diffusers.DDPMScheduler.from_pretrained(tmp_path).config.variance_type == "fixed_large"
    # In-memory conversions keep the synced stock key too (diffusers drops keys recorded as defaults).
    assert diffusers.DDPMScheduler.from_config(ours.config).config.variance_type == "fixed_large"


def test_conversion_between_schedulers_by_from_config():
    ours = DDPMScheduler(beta_schedule="cosine", prediction_type="v_prediction")
    ddim = DDIMScheduler.from_config(ours.config)
    assert ddim.config.prediction_type == "v_prediction" and torch.equal(ddim.alphas_cumprod, ours.alphas_cumprod)
    euler = diffusers.EulerDiscreteScheduler.from_config(ours.config)
    assert euler.config.prediction_type == "v_prediction"
    back = DDPMScheduler.from_config(diffusers.DDIMScheduler.from_config(ours.config).config)
    assert torch.equal(back.alphas_cumprod, ours.alphas_cumprod)


# diffusers' SchedulerCommonTest.get_scheduler_config of test_scheduler_ddpm.py and test_scheduler_ddim.py.
DIFFUSERS_TEST_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}
GAMMA = gaussian_gamma(DDPMScheduler(num_train_timesteps=100), 0.5).tolist()
COMMON_TEST_CASES = [
    (DDPMScheduler, {**DIFFUSERS_TEST_CONFIG, "variance_type": "fixed_small", "clip_sample": True}),
    (DDIMScheduler, {**DIFFUSERS_TEST_CONFIG, "clip_sample": True}),
    # hfddpm's options and other stock keys, on T = 100 (KDPM2 maps every training σ when it is built).
    (
        DDPMScheduler,
        {
            "num_train_timesteps": 100,
            "beta_schedule": "cosine",
            "timestep_spacing": "trailing",
            "reverse_variance": "fixed_large",
        },
    ),
    (DDIMScheduler, {"num_train_timesteps": 100, "reverse_variance": "analytic", "analytic_gamma": GAMMA}),
]
COMMON_TEST_IDS = ["ddpm", "ddim", "ddpm-options", "ddim-analytic"]


@pytest.mark.parametrize("cls, config", COMMON_TEST_CASES, ids=COMMON_TEST_IDS)
def test_compatibles(cls, config):
    # diffusers' test_compatibles, through every compatible class rather than the last one only: the config goes
    # through each and comes back unchanged, with no extra key the class takes. Compatible classes whose backend
    # is not installed (DPMSolverSDEScheduler without torchsde) are diffusers' placeholders and are left out.
    scheduler = cls(**config)
    compatibles = [c for c in scheduler.compatibles if not c.__module__.startswith("diffusers.utils.dummy")]
    assert diffusers.EulerDiscreteScheduler in compatibles and diffusers.DDIMScheduler in compatibles
    init_keys = set(inspect.signature(cls.__init__).parameters)
    for compatible in compatibles:
        back = cls.from_config(compatible.from_config(scheduler.config).config)
        if cls is DDPMScheduler and config is not COMMON_TEST_CASES[0][1]:
            # Off diffusers' own configs the private `_use_default_values` list (the defaults that from_config
            # drops) may come back in another order: diffusers builds it from a set, and hfddpm filters it.
            assert sorted(back.config["_use_default_values"]) == sorted(scheduler.config["_use_default_values"])
            back.register_to_config(_use_default_values=scheduler.config["_use_default_values"])
        assert {k: v for k, v in back.config.items() if k in scheduler.config} == dict(scheduler.config), compatible
        assert not (set(back.config) - set(scheduler.config)) & init_keys, compatible


@pytest.mark.parametrize(
    "cls, config",
    [
        *COMMON_TEST_CASES,
        (diffusers.DDPMScheduler, COMMON_TEST_CASES[0][1]),
        (diffusers.DDIMScheduler, COMMON_TEST_CASES[1][1]),
    ],
    ids=[*COMMON_TEST_IDS, "stock-ddpm", "stock-ddim"],
)
def test_from_pretrained(tmp_path, cls, config):
    # diffusers' test_from_pretrained, pointed at hfddpm's classes (stock's rows show the test is stock's own): only
    # the in-memory `_use_default_values` differs. hfddpm leaves unset options out of the JSON, and reading them
    # back as None keeps them out of `_use_default_values`.
    scheduler = cls(**config)
    scheduler.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    original = dict(scheduler.config)
    del original["_use_default_values"]
    assert original == loaded.config
    loaded.save_pretrained(tmp_path / "again")
    assert cls.from_pretrained(tmp_path / "again").config == loaded.config


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_trained_betas_round_trip(tmp_path, cls):
    # diffusers' test_trained_betas, with one β per training timestep (hfddpm refuses another length).
    scheduler = cls(num_train_timesteps=2, trained_betas=np.array([0.1, 0.3]))
    scheduler.save_pretrained(tmp_path)
    assert scheduler.betas.tolist() == cls.from_pretrained(tmp_path).betas.tolist()


# HFDDPMPipeline against diffusers' pipelines


@pytest.mark.parametrize("config", [{}, {"variance_type": "fixed_large", "clip_sample": False}], ids=config_id)
def test_same_images_as_stock_ddpm_pipeline(config):
    # hfddpm's pipeline and scheduler draw stock DDPMPipeline's images with stock's scheduler, bit for bit ("leading"
    # spacing ends at t = 0, where neither adds noise). The DDIM pair: test_pipeline.py.
    unet = tiny_unet(channels=3).eval()  # stock pipelines use the mode the model is in; hfddpm samples in eval
    ours = make_pipeline(unet, DDPMScheduler(**config))
    stock = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**config))
    stock.set_progress_bar_config(disable=True)
    kwargs = {"batch_size": 2, "num_inference_steps": 10, "output_type": "np"}
    a = ours(generator=torch.manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(a, stock(generator=torch.manual_seed(0), **kwargs).images)


SIGMA_SCHEDULERS = [
    diffusers.EulerDiscreteScheduler,
    diffusers.EulerAncestralDiscreteScheduler,
    diffusers.HeunDiscreteScheduler,
    diffusers.LMSDiscreteScheduler,
    diffusers.KDPM2DiscreteScheduler,
    diffusers.KDPM2AncestralDiscreteScheduler,
    # init_noise_sigma = 1 whatever the timesteps: the same loop, with nothing for the order to change.
    *(CONSTANT_INIT_NOISE_SIGMA := [diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler]),
]


def sample_in_diffusers_order(model, scheduler, num_inference_steps, generator, shape):
    """x_0 drawn as diffusers' pipelines draw it (StableDiffusionPipeline.__call__): `set_timesteps`, then the
    noise times `init_noise_sigma` (prepare_latents), then at each t `scale_model_input`, the model and `step`."""
    scheduler.set_timesteps(num_inference_steps)
    latents = randn_tensor(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        output = model(scheduler.scale_model_input(latents, t), t).sample
        latents = scheduler.step(output, t, latents, **step_kwargs).prev_sample
    return latents


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("scheduler_class", SIGMA_SCHEDULERS, ids=lambda cls: cls.__name__)
def test_stock_sigma_schedulers_are_called_in_diffusers_order(scheduler_class, spacing):
    # σ-parameterised schedulers start from N(0, init_noise_sigma² I), and on "leading" spacing init_noise_sigma
    # depends on the timesteps set_timesteps chooses (√(σ_max² + 1), σ_max of the first one): scaled before
    # set_timesteps, x_T had the noise level of t = T − 1 instead. T = 100 keeps KDPM2's construction cheap (it maps
    # every training σ to t); any T shows the order.
    ddpm = DDPMScheduler(num_train_timesteps=100, clip_sample=False)
    model = GaussianMixtureDenoiser.for_scheduler(ddpm, torch.full((1, 1, 2, 2), 0.3), [0.2])
    first_inputs = []
    model.register_forward_pre_hook(lambda module, args: first_inputs.append(args[0].float()))
    # The spacing as an argument: ddpm.config records "leading" as a default, which from_config leaves out.
    pipe = make_pipeline(model, scheduler_class.from_config(ddpm.config, timestep_spacing=spacing))
    ours = pipe(batch_size=4, generator=torch.manual_seed(0), num_inference_steps=5, output_type="latent").images
    reference_scheduler = scheduler_class.from_config(ddpm.config, timestep_spacing=spacing)
    reference = sample_in_diffusers_order(model, reference_scheduler, 5, torch.manual_seed(0), ours.shape)
    assert torch.equal(ours, reference)
    if spacing == "leading":
        # The network's first input is x_T/√(σ_T² + 1) with x_T ~ N(0, (σ_T² + 1) I): the standard normal draw
        # itself, as the network was trained to see pure noise (float32 rounding of the scale and its inverse).
        torch.testing.assert_close(first_inputs[0], randn_tensor(ours.shape, generator=torch.manual_seed(0)))
        if scheduler_class not in CONSTANT_INIT_NOISE_SIGMA:
            # The other order scales x_T by t = T − 1's noise level, and the first input would be ≥ 10 % off.
            unset = scheduler_class.from_config(ddpm.config, timestep_spacing=spacing).init_noise_sigma
            assert unset > 1.1 * reference_scheduler.init_noise_sigma
