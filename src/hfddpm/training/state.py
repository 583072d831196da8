"""Where a run stands: its optimizer step, its place in the data, and its counters, as checkpoints record them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class RunState:
    """The position and counters of a run; `record` is what a checkpoint's training_state.json holds of it."""

    global_step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch being read
    batches_in_epoch: int = 0  # batches of that epoch already trained on
    skipped_steps: int = 0  # updates the fp16 grad scaler skipped (overflow)
    nonfinite_steps: int = 0  # updates skipped for a NaN or Inf loss or gradient (--on_nonfinite_loss skip)
    wall_time_seconds: float = 0.0  # training time of the run's earlier segments, before the last resume

    def record(self, batches_per_epoch: int, wall_time_seconds: float) -> dict:
        """The state to checkpoint, with an epoch read to its end recorded as the start of the next one."""
        record = {**asdict(self), "wall_time_seconds": round(wall_time_seconds, 1)}
        if self.batches_in_epoch == batches_per_epoch:
            record.update(epoch=self.epoch + 1, batches_in_epoch=0)
        return record

    @classmethod
    def from_record(cls, record: dict) -> RunState:
        """The state a checkpoint recorded (counters absent from older checkpoints start at 0)."""
        return cls(**{field.name: record[field.name] for field in fields(cls) if field.name in record})
