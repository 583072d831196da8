import pytest
import torch
from diffusers import UNet2DModel

from hfddpm import UNET_PRESETS, create_unet, unet_config


def test_ddpm_cifar10_preset_has_the_published_size():
    # Ho et al. 2020, appendix B: "Our CIFAR10 model has 35.7 million parameters".
    unet = create_unet("ddpm-cifar10-32")
    assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(35.7, abs=0.05)
    assert unet.config.sample_size == 32 and unet.config.dropout == 0.1


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_every_preset_denoises_its_resolution(preset):
    config = unet_config(preset, learned_variance=True)
    assert config["out_channels"] == 2 * config["in_channels"]
    if preset != "tiny":
        return  # the large presets are built once in the test above and in test_large_presets_build
    unet = create_unet(preset, learned_variance=True)
    size = unet.config.sample_size
    out = unet(torch.randn(2, 3, size, size), torch.tensor([3, 900])).sample
    assert out.shape == (2, 6, size, size)


def test_large_presets_build():
    for preset in ("improved-ddpm-64",):
        unet = UNet2DModel(**unet_config(preset))
        assert unet.config.sample_size == 64
        assert unet.config.block_out_channels == (128, 256, 384, 512)


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
