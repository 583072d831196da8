"""Checkpoint folders: hfddpm's own, stock diffusers' (incl. the google/ddpm-cifar10-32 layout), in both directions."""

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hfddpm
from hfddpm import DDIMScheduler, DDPMScheduler, HFDDPMPipeline

from .conftest import tiny_unet

CALL = {"batch_size": 2, "num_inference_steps": 6, "output_type": "np"}


def images(pipe, seed=0, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.manual_seed(seed), **{**CALL, **kwargs}).images


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "scheduler, stock_pipeline",
    [
        (DDPMScheduler(reverse_variance="fixed_large", timestep_spacing="trailing"), "DDPMPipeline"),
        (DDIMScheduler(beta_schedule="cosine", reverse_variance="fixed_small"), "DDIMPipeline"),
    ],
)
def test_save_writes_the_stock_layout_in_safetensors_and_reloads_exactly(tmp_path, scheduler, stock_pipeline):
    pipe = HFDDPMPipeline(unet=tiny_unet(channels=3), scheduler=scheduler)
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
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["scheduler"] == ["diffusers", type(scheduler).__name__]
    weights = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in pipe.unet.state_dict().items())

    loaded = HFDDPMPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is type(scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(scheduler.config)
    np.testing.assert_array_equal(images(loaded, eta=1.0), before)


@pytest.mark.parametrize(
    "stock_pipeline_class, stock_scheduler, hfddpm_scheduler",
    [
        (diffusers.DDPMPipeline, diffusers.DDPMScheduler(variance_type="fixed_large"), DDPMScheduler),
        (diffusers.DDIMPipeline, diffusers.DDIMScheduler(prediction_type="v_prediction"), DDIMScheduler),
    ],
)
def test_loads_folders_written_by_stock_pipelines(tmp_path, stock_pipeline_class, stock_scheduler, hfddpm_scheduler):
    stock_pipeline_class(unet=tiny_unet(channels=3), scheduler=stock_scheduler).save_pretrained(tmp_path)
    ours = HFDDPMPipeline.from_pretrained(tmp_path)
    assert type(ours.scheduler) is hfddpm_scheduler
    stock = stock_pipeline_class.from_pretrained(tmp_path)
    # Stock settings (for DDIM: ε̂ not re-derived from the clipped x̂_0): stock's images, bit for bit.
    np.testing.assert_array_equal(images(ours, use_clipped_model_output=False), images(stock))


def write_ddpm_cifar10_layout(folder: Path) -> None:
    """A folder laid out like google/ddpm-cifar10-32 (configs from diffusers 0.1–0.5 with their keys), tiny."""
    (folder / "unet").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "_diffusers_version": "0.1.1",
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DModel"],
            }
        )
    )
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "DDPMScheduler",
                "_diffusers_version": "0.1.1",
                "beta_end": 0.02,
                "beta_schedule": "linear",
                "beta_start": 0.0001,
                "clip_sample": True,
                "num_train_timesteps": 1000,
                "trained_betas": None,
                "variance_type": "fixed_large",
            }
        )
    )
    unet_config = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.5.0.dev0",
        "act_fn": "silu",
        "attention_head_dim": None,
        "block_out_channels": [16, 32, 32, 32],
        "center_input_sample": False,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "in_channels": 3,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-06,
        "norm_num_groups": 8,
        "out_channels": 3,
        "sample_size": 16,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    }
    (folder / "unet" / "config.json").write_text(json.dumps(unet_config))
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel.from_config(unet_config)

    save_file(unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_loads_the_google_ddpm_cifar10_layout(tmp_path):
    write_ddpm_cifar10_layout(tmp_path)
    ours = HFDDPMPipeline.from_pretrained(tmp_path)
    assert type(ours.scheduler) is DDPMScheduler and ours.scheduler.config.variance_type == "fixed_large"
    assert ours.scheduler.config.timestep_spacing == "leading"  # a key the old config lacks takes the default
    stock = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    np.testing.assert_array_equal(images(ours), images(stock))
    assert images(ours, output_type="np").shape == (2, 16, 16, 3)


def test_stock_diffusion_pipeline_loads_an_hfddpm_folder_as_a_stock_pipeline(tmp_path):
    unet = tiny_unet(channels=3)
    HFDDPMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "ddim")
    stock = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "ddim")
    assert type(stock) is diffusers.DDIMPipeline and type(stock.scheduler) is diffusers.DDIMScheduler
    np.testing.assert_array_equal(
        images(stock), images(HFDDPMPipeline.from_pretrained(tmp_path / "ddim"), use_clipped_model_output=False)
    )

    # An hfddpm-only option is ignored by stock diffusers, which keeps the nearest stock choice.
    HFDDPMPipeline(unet=unet, scheduler=DDPMScheduler(reverse_variance="fixed_large")).save_pretrained(
        tmp_path / "ddpm"
    )
    stock = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "ddpm")
    assert type(stock) is diffusers.DDPMPipeline
    assert type(stock.scheduler) is diffusers.DDPMScheduler and stock.scheduler.config.variance_type == "fixed_large"
    assert images(stock).shape == (2, 8, 8, 3)


def test_unet_folder_is_a_plain_unet2dmodel(tmp_path):
    pipe = HFDDPMPipeline(unet=tiny_unet(channels=3, learned_variance=True), scheduler=DDPMScheduler())
    pipe.save_pretrained(tmp_path)
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "unet")
    assert unet.config.out_channels == 6
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in pipe.unet.state_dict().items())


def test_an_explicit_scheduler_replaces_the_saved_one(tmp_path):
    HFDDPMPipeline(unet=tiny_unet(channels=3), scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    solver = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    pipe = HFDDPMPipeline.from_pretrained(tmp_path, scheduler=solver)
    assert pipe.scheduler is solver
    assert images(pipe).shape == (2, 8, 8, 3)


def test_half_precision_load(tmp_path):
    HFDDPMPipeline(unet=tiny_unet(channels=3), scheduler=DDIMScheduler()).save_pretrained(tmp_path)
    pipe = HFDDPMPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    reference = images(HFDDPMPipeline.from_pretrained(tmp_path))
    assert np.abs(images(pipe) - reference).mean() < 0.03
