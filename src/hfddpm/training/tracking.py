"""A plain-text tracker for Accelerate: every logged dictionary as one JSON line."""

from __future__ import annotations

import json
import os
from operator import methodcaller
from pathlib import Path

from accelerate.tracking import GeneralTracker


class JSONLinesTracker(GeneralTracker):
    """Appends `{"step": …, **values}` to `<logging_dir>/<run_name>.jsonl`, readable without TensorBoard. A resumed
    run appends to the same file, so a step logged before the interruption can appear twice; the later line is the
    resumed run's."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(logging_dir) / f"{run_name}.jsonl"

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        self._append({"config": values})

    def log(self, values: dict, step: int | None = None, **kwargs: object) -> None:
        self._append({"step": step, **values})

    def _append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, default=methodcaller("item")) + "\n")  # tensors and NumPy scalars


def read_jsonl_log(path: str | os.PathLike) -> dict[int, dict]:
    """The logged values by step (the last line wins for a step logged twice)."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("step") is not None:
            by_step.setdefault(record["step"], {}).update(record)
    return by_step
