"""Pieces of the training loop: the step's randomness and precision, EMA copies, and atomic checkpoints."""

import errno
import json
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError

from hfddpm import DDPMScheduler
from hfddpm.durable import is_disk_full
from hfddpm.training.checkpoints import CheckpointError, CheckpointManager, load_state_dict, save_state_dict
from hfddpm.training.loop import TrainingRandomness, averaged_copy, replica_checksum, training_step
from hfddpm.training.losses import DiffusionLoss

from .conftest import tiny_unet


def test_randomness_state_round_trip():
    randomness = TrainingRandomness(seed=3, process_index=1)
    torch.randn(5, generator=randomness.generator)
    state = randomness.state_dict()
    expected = torch.randn(7, generator=randomness.generator)
    restored = TrainingRandomness(seed=0)
    restored.load_state_dict(state)
    assert torch.equal(torch.randn(7, generator=restored.generator), expected)
    other_process = TrainingRandomness(seed=3, process_index=0)
    assert not torch.equal(torch.randn(7, generator=other_process.generator), expected)


class RecordingModel(torch.nn.Module):
    """Stands in for the UNet: records its input, returns x_t·w."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.inputs = []

    def forward(self, sample, timesteps):
        self.inputs.append(sample)
        return SimpleNamespace(sample=sample * self.weight)


def test_noising_stays_in_float32_under_bf16_autocast():
    # Stock diffusers' example casts x_0 and ε to the mixed-precision dtype before add_noise; in bfloat16 dozens of
    # timesteps then carry > 5 % error in √ᾱ_t, and in float16 √(1 − ᾱ_t) is exactly 0 at t = 0, 1.
    scheduler = DDPMScheduler()
    model = RecordingModel()
    x0 = torch.full((4, 1, 4, 4), 0.5)
    randomness = TrainingRandomness(seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        training_step(model, scheduler, DiffusionLoss(scheduler), x0, randomness)
    noisy = model.inputs[0]
    assert noisy.dtype == torch.float32
    # Recompute with the same draws: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε exactly, in float32.
    replay = TrainingRandomness(seed=0)
    t = torch.randint(0, 1000, (4,), generator=replay.generator)
    noise = torch.randn(x0.shape, generator=replay.generator)
    alpha_bar = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
    half = (1 - scheduler.alphas_cumprod[:2].half()).sqrt()
    assert torch.all(half == 0)  # what casting first would do at t = 0, 1 in float16


def test_averaged_copy_holds_the_ema_weights():
    unet = tiny_unet()
    ema = EMAModel(unet.parameters(), decay=0.5)
    for _ in range(2):  # EMAModel's first step copies the weights (decay 0); the second averages
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(1.0)
        ema.step(unet.parameters())
    copy = averaged_copy(unet, ema)
    assert not copy.training and copy is not unet
    for shadow, param in zip(ema.shadow_params, copy.parameters(), strict=True):
        assert torch.equal(shadow, param)
    assert replica_checksum(copy) != replica_checksum(unet)


def test_state_dicts_of_ema_and_lr_schedule_round_trip_without_pickle(tmp_path):
    unet = tiny_unet()
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True, power=0.75, foreach=True)
    ema.step(unet.parameters())
    optimizer = torch.optim.AdamW(unet.parameters())
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=3, num_training_steps=10)
    for _ in range(4):
        optimizer.step()
        lr_scheduler.step()
    for name, obj in (("ema", ema), ("lr", lr_scheduler)):
        save_state_dict(obj.state_dict(), tmp_path / name)
        assert {p.suffix for p in tmp_path.glob(f"{name}.*")} == {".json", ".safetensors"}
    fresh_ema = EMAModel(tiny_unet(seed=1).parameters())
    fresh_ema.load_state_dict(load_state_dict(tmp_path / "ema"))
    assert fresh_ema.optimization_step == 1 and fresh_ema.power == 0.75
    assert all(torch.equal(a, b) for a, b in zip(fresh_ema.shadow_params, ema.shadow_params, strict=True))
    fresh_lr = get_scheduler("cosine", torch.optim.AdamW(unet.parameters()), num_warmup_steps=3, num_training_steps=10)
    fresh_lr.load_state_dict(load_state_dict(tmp_path / "lr"))
    assert fresh_lr.get_last_lr() == lr_scheduler.get_last_lr()


def test_checkpoints_are_complete_rotated_and_resolved(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 3))
    randomness = TrainingRandomness(seed=0)
    manager = CheckpointManager(tmp_path / "checkpoints", total_limit=2)
    ema = EMAModel(model.parameters())
    for step in (10, 20, 30):
        with torch.no_grad():
            model.weight.fill_(step)
        manager.save(accelerator, step, {"epoch": 0, "batches_in_epoch": step}, {"ema": ema}, randomness)
    assert [p.name for p in manager.complete()] == ["checkpoint-20", "checkpoint-30"]
    # A save killed midway leaves a partial folder that is never taken for a checkpoint.
    (tmp_path / "checkpoints" / ".checkpoint-40.partial").mkdir()
    (tmp_path / "checkpoints" / "checkpoint-50").mkdir()  # no training_state.json: incomplete
    assert manager.resolve("latest").name == "checkpoint-30"

    with torch.no_grad():
        model.weight.fill_(0)
    state = manager.load(
        accelerator, manager.resolve(str(tmp_path / "checkpoints" / "checkpoint-20")), {"ema": ema}, randomness
    )
    assert state["global_step"] == 20 and state["batches_in_epoch"] == 20
    assert torch.all(model.weight == 20)
    assert json.loads((tmp_path / "checkpoints" / "checkpoint-20" / "training_state.json").read_text())["epoch"] == 0

    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        manager.resolve(str(tmp_path / "checkpoints" / "checkpoint-50"))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        CheckpointManager(tmp_path / "nothing").resolve("latest")
    with pytest.raises(ValueError, match="checkpoints_total_limit must be at least 1"):
        CheckpointManager(tmp_path, total_limit=0)


def test_a_checkpoint_that_meets_a_full_disk_is_removed_and_the_previous_one_kept(tmp_path, monkeypatch):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(3, 3))
    randomness = TrainingRandomness(seed=0)
    manager = CheckpointManager(tmp_path / "checkpoints")
    position = {"epoch": 0, "batches_in_epoch": 1}
    manager.save(accelerator, 1, position, {}, randomness)

    def full_disk(tensors, filename):  # what safetensors raises when the device is full
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, message: "No space left on device" })')

    monkeypatch.setattr("hfddpm.training.checkpoints.save_file", full_disk)
    with pytest.raises(CheckpointError) as error:
        manager.save(accelerator, 2, position, {}, randomness)
    assert str(error.value) == (
        f"no space left to write {tmp_path / 'checkpoints' / 'checkpoint-2'} (Error while serializing: IoError(Os "
        '{ code: 28, message: "No space left on device" })); checkpoint-1 is kept: free disk space or choose another '
        "--output_dir, then resume with --resume_from_checkpoint latest"
    )
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-1"]
    assert manager.load(accelerator, manager.resolve("latest"), {}, randomness)["global_step"] == 1


def test_is_disk_full_reads_the_os_error_through_wrapping_exceptions():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("PytorchStreamWriter failed: File too large"))
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as quota:
            raise RuntimeError("write failed") from quota
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"))
