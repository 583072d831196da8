"""Training: the engine (one loop for every objective), its configuration, objectives and checkpoints.

    config = TrainingConfig(output_dir="outputs/run", max_train_steps=500)  # or TrainingConfig.from_command_line(argv)
    status = run_command(lambda: train_unconditional(config))  # one-line errors and exit statuses, as the scripts

A new objective implements `Objective` (a batch → a `LossOutput`) and hands itself to `Trainer` with a model and a
dataset; everything else — Accelerate, EMA, checkpoints and resume, fault checks, logging, sample grids, evaluation,
saving and publishing — is the engine's. Training needs the [train] extra; the names below are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "AutoencoderConfig": "autoencoder",
    "AutoencoderLoss": "autoencoder",
    "ConsistencyDistillationConfig": "consistency",
    "ConsistencyDistillationObjective": "consistency",
    "DenoisingLoss": "objectives",
    "LSGMConfig": "lsgm",
    "LSGMLoss": "lsgm",
    "LossOutput": "objectives",
    "Objective": "objectives",
    "ProgressiveDistillationConfig": "progressive",
    "ProgressiveDistillationObjective": "progressive",
    "RunConfig": "config",
    "Trainer": "engine",
    "TrainingConfig": "config",
    "distill_consistency": "consistency",
    "distill_progressive": "progressive",
    "run_command": "faults",
    "train_autoencoder": "autoencoder",
    "train_lsgm": "lsgm",
    "train_unconditional": "unconditional",
}
__all__ = [
    "AutoencoderConfig",
    "AutoencoderLoss",
    "ConsistencyDistillationConfig",
    "ConsistencyDistillationObjective",
    "DenoisingLoss",
    "LSGMConfig",
    "LSGMLoss",
    "LossOutput",
    "Objective",
    "ProgressiveDistillationConfig",
    "ProgressiveDistillationObjective",
    "RunConfig",
    "Trainer",
    "TrainingConfig",
    "distill_consistency",
    "distill_progressive",
    "run_command",
    "train_autoencoder",
    "train_lsgm",
    "train_unconditional",
]

if TYPE_CHECKING:
    from .autoencoder import AutoencoderConfig, AutoencoderLoss, train_autoencoder
    from .config import RunConfig, TrainingConfig
    from .consistency import ConsistencyDistillationConfig, ConsistencyDistillationObjective, distill_consistency
    from .engine import Trainer
    from .faults import run_command
    from .lsgm import LSGMConfig, LSGMLoss, train_lsgm
    from .objectives import DenoisingLoss, LossOutput, Objective
    from .progressive import ProgressiveDistillationConfig, ProgressiveDistillationObjective, distill_progressive
    from .unconditional import train_unconditional


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
