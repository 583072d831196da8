"""hfddpm's schedulers against stock diffusers as the oracle: with no hfddpm option set, they behave as stock.

These reproduce the checks of diffusers' own tests/schedulers/test_scheduler_ddpm.py and test_scheduler_ddim.py
(configs, save/load round trips, off-grid timesteps, custom timesteps, full loops) as differential tests.
"""

import json

import diffusers
import numpy as np
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler

from .conftest import dummy_model, dummy_sample_deter

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
    # (tests/test_bad_inputs.py).
    {"variance_type": "fixed_small_log"},
    {"variance_type": "learned_range", "channels_out": 2},
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


def _run_loop(scheduler, num_inference_steps, seed=0, **step_kwargs):
    """Denoise diffusers' deterministic test sample with its dummy model; return every step's outputs."""
    channels_out = step_kwargs.pop("channels_out", 1)
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    sample = dummy_sample_deter()
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for t in scheduler.timesteps:
        residual = torch.cat([dummy_model(sample, t)] + [torch.full_like(sample, 0.3)] * (channels_out - 1), dim=1)
        out = scheduler.step(residual, t, sample, generator=generator, **step_kwargs)
        outputs.append((out.prev_sample, out.pred_original_sample))
        sample = out.prev_sample
    return outputs


@pytest.mark.parametrize("config", DDPM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}"[:30] for k, v in c.items()))
@pytest.mark.parametrize("num_inference_steps", [None, 10, 7])
def test_ddpm_loop_is_stock(config, num_inference_steps):
    config = dict(config)
    channels_out = config.pop("channels_out", 1)
    ours, stock = DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    ours_out = _run_loop(ours, num_inference_steps, channels_out=channels_out)
    stock_out = _run_loop(stock, num_inference_steps, channels_out=channels_out)
    assert torch.equal(ours.timesteps, stock.timesteps)
    last = len(ours_out) - 1
    for step, ((a, a0), (b, b0)) in enumerate(zip(ours_out, stock_out, strict=True)):
        if step == last and ours.timesteps[-1] > 0:
            # Stock's defect, not copied: it adds noise to x_0 whenever the last timestep is above 0 ("trailing",
            # steps_offset=1); hfddpm returns stock's own mean there, which is x̂_0 (test_the_step_to_x0_...).
            b = b0
        # Bit for bit; NaN where stock gives NaN (β_end = 0.2 drives ᾱ to 0 in float32).
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(a0, b0, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "quadratic", "leading+offset"])
@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned_range", "learned"]
)
def test_the_step_to_x0_adds_no_noise_with_stock_keys(spacing, variance_type):
    # The README's promise, for configs of stock keys only: the last step returns x̂_0, whatever the spacing, so two
    # generators give the same x_0. Stock decides "last" by t > 0, and the last timestep of "trailing" (99 here)
    # or of steps_offset=1 (1) is above 0, so there it added noise of variance β_t (fixed_large) or the learned one.
    options = {"timestep_spacing": spacing} if spacing != "leading+offset" else {"steps_offset": 1}
    scheduler = DDPMScheduler(variance_type=variance_type, clip_sample=False, **options)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[-1]
    sample = dummy_sample_deter()
    channels = 2 if variance_type.startswith("learned") else 1
    output = torch.cat([dummy_model(sample, t)] + [torch.full_like(sample, 0.3)] * (channels - 1), dim=1)
    steps = [scheduler.step(output, t, sample, generator=torch.manual_seed(seed)) for seed in (0, 1)]
    expected_x0 = (
        sample - (1 - scheduler.alphas_cumprod[t]) ** 0.5 * dummy_model(sample, t)
    ) / scheduler.alphas_cumprod[t] ** 0.5
    for step in steps:
        torch.testing.assert_close(step.pred_original_sample, expected_x0, rtol=1e-6, atol=1e-6)
        assert torch.equal(step.prev_sample, step.pred_original_sample)


@pytest.mark.parametrize("config", DDIM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}"[:30] for k, v in c.items()))
@pytest.mark.parametrize("num_inference_steps, eta", [(10, 0.0), (50, 0.5), (20, 1.0)])
def test_ddim_loop_is_stock_where_the_step_grid_agrees(config, num_inference_steps, eta):
    ours, stock = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    for use_clipped in (False, True):
        ours_out = _run_loop(ours, num_inference_steps, eta=eta, use_clipped_model_output=use_clipped)
        stock_out = _run_loop(stock, num_inference_steps, eta=eta, use_clipped_model_output=use_clipped)
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
    [(DDPMScheduler, diffusers.DDPMScheduler, c) for c in DDPM_CONFIGS if "channels_out" not in c]
    + [(DDIMScheduler, diffusers.DDIMScheduler, c) for c in DDIM_CONFIGS],
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
    "timesteps, error, message",
    [
        # Stock refuses these two with its own words ("descending", "must start before"); hfddpm with one line each.
        (
            [100, 87, 50, 51, 0],
            ValueError,
            r"timesteps must be in strictly descending order .*, got \[100, 87, 50, 51, 0\]",
        ),
        ([1000], ValueError, r"timesteps\[0\] must be in \[0, 999\], got 1000"),
        # Stock takes these silently: a duplicate, a negative t (read as ᾱ of t = 999), a fraction (truncated).
        ([100, 50, 50, 0], ValueError, "timesteps must be in strictly descending order"),
        ([100, 50, -1], ValueError, r"timesteps\[2\] must be in \[0, 999\], got -1"),
        ([100, 50.5, 0], TypeError, r"timesteps\[1\] must be an integer, got 50.5 \(float\)"),
        ([100, True], TypeError, r"timesteps\[1\] must be an integer, got True \(bool\)"),
        ([], ValueError, "timesteps is empty"),
    ],
)
def test_bad_custom_timesteps_are_refused_in_one_line(timesteps, error, message):
    with pytest.raises(error, match=message):
        DDPMScheduler().set_timesteps(timesteps=timesteps)


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


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_zero_or_negative_steps_are_refused(cls):
    for steps in (0, -3):
        with pytest.raises(ValueError, match=rf"num_inference_steps must be in \[1, 1000\], got {steps}"):
            cls().set_timesteps(steps)


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prediction_type": "noise"}, "prediction_type must be one of"),
        ({"timestep_spacing": "quadratic-ish"}, "timestep_spacing must be one of"),
        ({"reverse_variance": "fixed_medium"}, "reverse_variance must be None or one of"),
    ],
)
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_unknown_option_names_are_refused(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


STOCK_KEYS = [{}, {"timestep_spacing": "trailing", "beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"}]
SAVE_LOAD_CASES = [
    (cls, config)
    for cls in (DDPMScheduler, DDIMScheduler, diffusers.DDPMScheduler, diffusers.DDIMScheduler)
    for config in STOCK_KEYS
] + [
    (DDPMScheduler, {"reverse_variance": "fixed_large"}),
    (DDIMScheduler, {"reverse_variance": "analytic", "analytic_gamma": [0.5] * 1000}),
]


@pytest.mark.parametrize(
    "cls, config", SAVE_LOAD_CASES, ids=lambda value: getattr(value, "__module__", None) or ",".join(value)
)
def test_a_saved_and_loaded_scheduler_has_the_original_config(tmp_path, cls, config):
    # diffusers' SchedulerCommonTest.test_from_pretrained, pointed at hfddpm's classes (stock's rows show the test
    # is stock's own): only the in-memory `_use_default_values` differs. hfddpm leaves unset options out of the
    # JSON, and reading them back as None keeps them out of `_use_default_values`.
    scheduler = cls(**config)
    scheduler.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    original = dict(scheduler.config)
    del original["_use_default_values"]
    assert original == loaded.config
    again = tmp_path / "again"
    loaded.save_pretrained(again)
    assert cls.from_pretrained(again).config == loaded.config


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_trained_betas_round_trip(tmp_path, cls):
    # diffusers' test_trained_betas, with one β per training timestep (hfddpm refuses another length).
    scheduler = cls(num_train_timesteps=2, trained_betas=np.array([0.1, 0.3]))
    scheduler.save_pretrained(tmp_path)
    assert scheduler.betas.tolist() == cls.from_pretrained(tmp_path).betas.tolist()
