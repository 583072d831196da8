"""Training checkpoints: complete or absent, rotated, resolved, restored exactly (the step's randomness too), without
pickles of hfddpm's own, and a full disk that keeps the previous one."""

import errno
import json

import pytest
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError

from hfddpm.durable import is_disk_full
from hfddpm.training.checkpoints import CheckpointManager, RunState, load_state_dict, save_state_dict
from hfddpm.training.faults import CheckpointError

from .conftest import tiny_unet


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
    generator = torch.Generator().manual_seed(3)
    manager = CheckpointManager(tmp_path / "checkpoints", total_limit=2)
    ema = EMAModel(model.parameters())
    for step in (10, 20, 30):
        with torch.no_grad():
            model.weight.fill_(step)
        if step == 20:  # the step's randomness is saved and restored with the rest
            expected = torch.randn(7, generator=torch.Generator().set_state(generator.get_state()))
        manager.save(accelerator, step, {"epoch": 0, "batches_in_epoch": step}, {"ema": ema}, generator, {})
        torch.randn(5, generator=generator)
    assert [p.name for p in manager.complete()] == ["checkpoint-20", "checkpoint-30"]
    # A save killed midway leaves a partial folder that is never taken for a checkpoint.
    (tmp_path / "checkpoints" / ".checkpoint-40.partial").mkdir()
    (tmp_path / "checkpoints" / "checkpoint-50").mkdir()  # no training_state.json: incomplete
    assert manager.resolve("latest").name == "checkpoint-30"

    with torch.no_grad():
        model.weight.fill_(0)
    restored = torch.Generator()
    state = manager.load(
        accelerator, manager.resolve(str(tmp_path / "checkpoints" / "checkpoint-20")), {"ema": ema}, restored, {}
    )
    assert state["global_step"] == 20 and state["batches_in_epoch"] == 20
    assert torch.all(model.weight == 20) and torch.equal(torch.randn(7, generator=restored), expected)
    assert json.loads((tmp_path / "checkpoints" / "checkpoint-20" / "training_state.json").read_text())["epoch"] == 0

    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        manager.resolve(str(tmp_path / "checkpoints" / "checkpoint-50"))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        CheckpointManager(tmp_path / "nothing").resolve("latest")


def test_a_checkpoint_that_meets_a_full_disk_is_removed_and_the_previous_one_kept(tmp_path, monkeypatch):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(3, 3))
    generator = torch.Generator()
    manager = CheckpointManager(tmp_path / "checkpoints")
    position = {"epoch": 0, "batches_in_epoch": 1}
    manager.save(accelerator, 1, position, {}, generator, {})

    def full_disk(tensors, filename):  # what safetensors raises when the device is full
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, message: "No space left on device" })')

    monkeypatch.setattr("hfddpm.training.checkpoints.save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"no space left to write .*checkpoint-2 .*; checkpoint-1 is kept: free"):
        manager.save(accelerator, 2, position, {}, generator, {})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-1"]
    assert manager.load(accelerator, manager.resolve("latest"), {}, generator, {})["global_step"] == 1


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


def test_the_run_state_records_its_position_counters_and_time_and_reads_them_back():
    state = RunState(global_step=7, epoch=2, batches_in_epoch=24, skipped_steps=1, nonfinite_steps=2)
    record = state.record(batches_per_epoch=24, wall_time_seconds=41.26)
    # An epoch read to its end is recorded as the start of the next one.
    assert record == {
        "global_step": 7,
        "epoch": 3,
        "batches_in_epoch": 0,
        "skipped_steps": 1,
        "nonfinite_steps": 2,
        "wall_time_seconds": 41.3,
    }
    assert RunState.from_record({**record, "hfddpm_version": "0.1.0"}) == RunState(7, 3, 0, 1, 2, 41.3)
    assert state.record(batches_per_epoch=47, wall_time_seconds=0.0)["epoch"] == 2  # mid-epoch stays
    assert RunState.from_record({"global_step": 5, "epoch": 1, "batches_in_epoch": 3}) == RunState(5, 1, 3)  # older
