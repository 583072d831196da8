"""On a CUDA device: sampling in float32 and half precision, and mixed-precision training. Skipped without one."""

import numpy as np
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler
from hfddpm.training.tracking import read_jsonl_log

from .conftest import make_pipeline, tiny_unet
from .test_train_script import train, weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(
    "dtype, tolerance",
    # cuDNN convolutions use TF32 by default, so even float32 differs from the CPU at the 1e-3 level.
    [(torch.float32, 0.005), (torch.float16, 0.01), (torch.bfloat16, 0.04)],
)
def test_cuda_sampling_matches_the_cpu(scheduler_class, dtype, tolerance):
    scheduler = scheduler_class(timestep_spacing="trailing")
    kwargs = {"batch_size": 4, "num_inference_steps": 10, "output_type": "np"}
    reference = make_pipeline(tiny_unet(channels=3), scheduler)(generator=torch.manual_seed(0), **kwargs).images
    pipe = make_pipeline(tiny_unet(channels=3).to("cuda", dtype), scheduler_class(timestep_spacing="trailing"))
    # A CPU generator draws the same noise whatever the device, so the two runs start from the same x_T.
    images = pipe(generator=torch.manual_seed(0), **kwargs).images
    assert pipe.device.type == "cuda" and images.dtype == np.float32
    assert np.abs(images - reference).mean() < tolerance


def test_cuda_generator_is_reproducible():
    pipe = make_pipeline(tiny_unet(channels=3).to("cuda"), DDPMScheduler())
    first = pipe(batch_size=2, generator=torch.Generator("cuda").manual_seed(1), num_inference_steps=5).images
    again = pipe(batch_size=2, generator=torch.Generator("cuda").manual_seed(1), num_inference_steps=5).images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_on_cuda(tmp_path, precision):
    train(tmp_path / precision, "--max_train_steps", "60", "--mixed_precision", precision, "--train_batch_size", "64")
    log = read_jsonl_log(tmp_path / precision / "logs" / "train.jsonl")
    losses = torch.tensor([log[s]["loss"] for s in range(1, 61)])
    assert torch.isfinite(losses).all() and losses[-10:].mean() < 0.5 * losses[:10].mean()
    skipped = log[60]["skipped_steps"]
    # fp16's grad scaler starts at 2^16 and halves on each overflow, skipping that update; bf16 needs no scaler.
    assert (0 < skipped < 30) if precision == "fp16" else skipped == 0
    assert weights(tmp_path / precision)["conv_in.weight"].dtype == torch.float32
