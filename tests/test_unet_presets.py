"""The named UNet configurations: their published sizes and layouts, and the sizes they refuse."""

import numpy as np
import pytest
import torch

from hfddpm import UNET_PRESETS, create_unet, unet_config
from hfddpm.models.unet_presets import check_sample_size

# Each preset's size in millions of parameters as the README states it, and half a unit of its last digit (the
# figures are rounded). Nichol & Dhariwal publish no count for their 64×64 layout built from diffusers' blocks (their
# network normalises and splits heads differently), so improved-ddpm-64's own count is pinned instead: checkpoints
# depend on a preset never changing.
STATED_MILLIONS = {
    "tiny": (0.18, 0.005),
    "digits": (1.1, 0.05),
    "mnist-28": (6.5, 0.05),
    "mnist-28-cpu": (1.1, 0.05),
    "latent-small": (2.0, 0.05),
    "ddpm-cifar10-32": (35.7, 0.05),  # Ho et al. 2020, appendix B: "Our CIFAR10 model has 35.7 million parameters"
    "improved-ddpm-64": (115.94, 0.005),
}


def meta_unet(preset: str, learned_variance: bool = False, **overrides):
    """The preset's UNet with its weights on the meta device: shapes and counts without the memory or the time."""
    with torch.device("meta"):
        return create_unet(preset, learned_variance=learned_variance, **overrides)


def test_every_preset_has_a_stated_size():
    assert sorted(STATED_MILLIONS) == sorted(UNET_PRESETS)


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_every_preset_has_its_stated_parameter_count(preset):
    stated, rounding = STATED_MILLIONS[preset]
    assert sum(p.numel() for p in meta_unet(preset).parameters()) / 1e6 == pytest.approx(stated, abs=rounding)


@pytest.mark.parametrize("learned_variance", [False, True])
@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_every_preset_denoises_its_resolution(preset, learned_variance):
    unet = meta_unet(preset, learned_variance)
    preset_config = UNET_PRESETS[preset]
    assert {key: unet.config[key] for key in preset_config} == dict(preset_config)  # every option reaches the model
    channels, size = preset_config["in_channels"], preset_config["sample_size"]
    assert unet.config.out_channels == (2 if learned_variance else 1) * channels
    # Meta tensors carry shapes through every layer: misaligned skip connections or channels raise here too.
    with torch.device("meta"):
        out = unet(torch.randn(2, channels, size, size), torch.tensor([3, 900])).sample
    assert out.shape == (2, unet.config.out_channels, size, size)


def test_improved_ddpm_64_has_the_papers_layout():
    # Nichol & Dhariwal 2021, ImageNet 64×64: channel multipliers (1, 2, 3, 4) on 128 channels, three residual blocks
    # per resolution, attention at 16×16 and 8×8; 64 channels per head here.
    unet = meta_unet("improved-ddpm-64")
    assert unet.config.sample_size == 64
    assert unet.config.block_out_channels == tuple(128 * m for m in (1, 2, 3, 4))
    assert [len(block.resnets) for block in unet.down_blocks] == [3, 3, 3, 3]
    heads = {
        64 // 2**i: {attention.heads for attention in block.attentions}
        for i, block in enumerate(unet.down_blocks)
        if hasattr(block, "attentions")
    }
    assert heads == {16: {384 // 64}, 8: {512 // 64}}


def test_overrides_and_channel_rule():
    unet = create_unet("tiny", in_channels=1, sample_size=8)
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.sample_size) == (1, 1, 8)
    assert meta_unet("tiny", learned_variance=True, in_channels=1).config.out_channels == 2
    with pytest.raises(ValueError, match="out_channels follows in_channels and learned_variance; set those instead"):
        unet_config("tiny", out_channels=5)
    with pytest.raises(ValueError, match=r"unknown UNet preset 'cifar'; choose one of \[.*'ddpm-cifar10-32'"):
        unet_config("cifar")
    with pytest.raises(TypeError):
        UNET_PRESETS["tiny"]["sample_size"] = 4  # presets are read-only: checkpoints depend on them


@pytest.mark.parametrize(
    "preset, sample_size, message",
    [
        ("tiny", 9, r"sample_size=9 is not divisible by 2, .* UNet preset 'tiny' \(2 resolutions\); .* 8 or 10"),
        ("digits", 10, r"sample_size=10 is not divisible by 4, .* such as 8 or 12"),
        ("ddpm-cifar10-32", 5, r"sample_size=5 is not divisible by 8, .* such as 8$"),
        ("digits", [8, 6], r"sample_size=6 is not divisible by 4"),
    ],
)
def test_a_size_the_unet_cannot_halve_is_refused_with_the_sizes_that_fit(preset, sample_size, message):
    # The skip connections would not line up, and the first forward pass would fail deep inside diffusers.
    with pytest.raises(ValueError, match=message):
        meta_unet(preset, sample_size=sample_size)


def test_a_configuration_files_size_is_refused_naming_the_file():
    config = {**unet_config("digits"), "sample_size": 6}
    with pytest.raises(ValueError, match=r"downsampling factor of model/config.json \(3 resolutions\)"):
        check_sample_size(config, "model/config.json")
    check_sample_size({**config, "sample_size": [8, 16]}, "model/config.json")  # rectangles of multiples pass


def test_numpy_integers_are_sizes_and_counts():
    unet = meta_unet("tiny", sample_size=np.int64(8), in_channels=np.int32(1), layers_per_block=np.int64(1))
    assert unet.config.sample_size == 8 and unet.config.out_channels == 1


def test_a_fourier_features_unet_feeds_its_unet_the_input_and_its_features_and_reloads(tmp_path):
    from hfddpm import DDIMScheduler, FourierFeaturesUNet, HFDDPMPipeline

    torch.manual_seed(0)
    model = FourierFeaturesUNet.around(create_unet("tiny", in_channels=2, sample_size=8), exponents=[1, 7])
    assert model.config.in_channels == 2 and model.unet.config.in_channels == 2 * 5  # z, then sin and cos of each
    sample, t = torch.rand(3, 2, 8, 8) * 2 - 1, torch.tensor([0.5, 10.0, 999.0])
    angles = torch.stack([torch.pi * 2 * sample, torch.pi * 128 * sample], 2)  # (B, C, n, H, W): 2ⁿπ z
    features = torch.cat([angles.sin(), angles.cos()], 2).flatten(1, 2)
    expected = model.unet(torch.cat([sample, features], 1), t).sample
    torch.testing.assert_close(model(sample, t).sample, expected)
    HFDDPMPipeline(unet=model, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipeline")
    loaded = HFDDPMPipeline.from_pretrained(tmp_path / "pipeline")
    assert isinstance(loaded.unet, FourierFeaturesUNet)
    torch.testing.assert_close(loaded.unet(sample, t).sample, expected)
    assert loaded(batch_size=2, num_inference_steps=2, output_type="pt").images.shape == (2, 2, 8, 8)
