"""Run in an environment with `pip install hfddpm` and no extra: sampling works, and training and evaluation each
answer with one line naming the extra to install."""

import subprocess
import sys
import tempfile

import torch

from hfddpm import DDIMScheduler, HFDDPMPipeline, create_unet

pipeline = HFDDPMPipeline(create_unet("tiny", in_channels=1, sample_size=8), DDIMScheduler())
images = pipeline(batch_size=2, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
assert images.shape == (2, 8, 8, 1), images.shape

try:
    from hfddpm.training import train_unconditional  # noqa: F401
except ImportError as error:
    assert "pip install 'hfddpm[train]'" in str(error), error
else:
    sys.exit("hfddpm.training imported without the [train] extra installed")

script = subprocess.run([sys.executable, "examples/train_unconditional.py"], capture_output=True, text=True)
assert script.returncode == 2 and script.stderr.strip().endswith("pip install 'hfddpm[train]'"), script.stderr
with tempfile.TemporaryDirectory() as folder:
    command = [sys.executable, "-m", "hfddpm", "visualize", "forward", "--output", f"{folder}/forward.png"]
    command = subprocess.run(command, capture_output=True, text=True)
assert command.returncode == 2 and len(command.stderr.strip().splitlines()) == 1, command.stderr
assert "pip install 'hfddpm[train]' or pip install 'hfddpm[eval]'" in command.stderr, command.stderr
print("core install: samples; training and evaluation name their extras")
