"""Training: the engine (one loop for every objective), its configuration, objectives, losses and checkpoints.

    config = TrainingConfig(output_dir="outputs/run", max_train_steps=500)  # or parse_training_config(argv)
    status = run_command(lambda: train_unconditional(config))  # one-line errors and exit codes, as the script

A new objective implements `Objective` (a batch → an output with `.loss`) and hands itself to `Trainer` with a model
and a dataset; everything else — Accelerate, EMA, checkpoints and resume, fault checks, logging, sample grids,
evaluation, saving and publishing — is the engine's. The names below are imported on first use, so a module of this
package (the losses, say) loads without Accelerate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "ConsistencyDistillationConfig": "distill",
    "ConsistencyDistillationObjective": "distillation",
    "DenoisingObjective": "objectives",
    "Objective": "objectives",
    "ProgressiveDistillationConfig": "distill",
    "ProgressiveDistillationObjective": "distillation",
    "Trainer": "engine",
    "TrainingConfig": "config",
    "parse_training_config": "config",
    "training_argument_parser": "config",
    "distill_consistency": "distill",
    "distill_consistency_command": "distill",
    "distill_progressive": "distill",
    "distill_progressive_command": "distill",
    "run_command": "command",
    "train_unconditional": "unconditional",
    "train_unconditional_command": "unconditional",
}
__all__ = [
    "ConsistencyDistillationConfig",
    "ConsistencyDistillationObjective",
    "DenoisingObjective",
    "Objective",
    "ProgressiveDistillationConfig",
    "ProgressiveDistillationObjective",
    "Trainer",
    "TrainingConfig",
    "distill_consistency",
    "distill_consistency_command",
    "distill_progressive",
    "distill_progressive_command",
    "parse_training_config",
    "run_command",
    "train_unconditional",
    "train_unconditional_command",
    "training_argument_parser",
]

if TYPE_CHECKING:
    from .command import run_command
    from .config import TrainingConfig, parse_training_config, training_argument_parser
    from .distill import (
        ConsistencyDistillationConfig,
        ProgressiveDistillationConfig,
        distill_consistency,
        distill_consistency_command,
        distill_progressive,
        distill_progressive_command,
    )
    from .distillation import ConsistencyDistillationObjective, ProgressiveDistillationObjective
    from .engine import Trainer
    from .objectives import DenoisingObjective, Objective
    from .unconditional import train_unconditional, train_unconditional_command


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
