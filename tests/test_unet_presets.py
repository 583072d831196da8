import pytest
import torch

from hfddpm import UNET_PRESETS, create_unet, unet_config

# Each preset's size in millions of parameters as the README states it, and half a unit of its last digit (the
# figures are rounded). Nichol & Dhariwal publish no count for their 64×64 layout built from diffusers' blocks (their
# network normalises and splits heads differently), so improved-ddpm-64's own count is pinned instead: checkpoints
# depend on a preset never changing.
STATED_MILLIONS = {
    "tiny": (0.18, 0.005),
    "digits": (1.1, 0.05),
    "mnist-28": (6.5, 0.05),
    "ddpm-cifar10-32": (35.7, 0.05),  # Ho et al. 2020, appendix B
    "improved-ddpm-64": (115.94, 0.005),
}


def meta_unet(preset: str, learned_variance: bool = False):
    """The preset's UNet with its weights on the meta device: shapes and counts without the memory or the time."""
    with torch.device("meta"):
        return create_unet(preset, learned_variance=learned_variance)


def test_ddpm_cifar10_preset_has_the_published_size():
    # Ho et al. 2020, appendix B: "Our CIFAR10 model has 35.7 million parameters".
    unet = create_unet("ddpm-cifar10-32")
    assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(35.7, abs=0.05)
    assert unet.config.sample_size == 32 and unet.config.dropout == 0.1


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
    assert create_unet("tiny", learned_variance=True, in_channels=1).config.out_channels == 2
    with pytest.raises(ValueError, match="out_channels follows in_channels"):
        unet_config("tiny", out_channels=5)
    with pytest.raises(ValueError, match="unknown UNet preset 'cifar'; choose one of"):
        unet_config("cifar")
    with pytest.raises(TypeError):
        UNET_PRESETS["tiny"]["sample_size"] = 4  # presets are read-only: checkpoints depend on them
