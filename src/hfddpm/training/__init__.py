"""Training: the engine (one loop for every objective), its configuration, objectives, losses and checkpoints.

    config = TrainingConfig(output_dir="outputs/run", max_train_steps=500)  # or parse_training_config(argv)
    status = run_command(lambda: train_unconditional(config))  # one-line errors and exit codes, as the script

A new objective implements `Objective` (a batch → `LossOutput`) and hands itself to `Trainer` with a model and
a dataset; everything else — Accelerate, EMA, checkpoints and resume, fault checks, logging, sample grids,
evaluation, saving and publishing — is the engine's.
"""

from .command import run_command
from .config import TrainingConfig, parse_training_config, training_argument_parser
from .engine import Trainer
from .objectives import DenoisingObjective, Objective
from .unconditional import train_unconditional, train_unconditional_command

__all__ = [
    "DenoisingObjective",
    "Objective",
    "Trainer",
    "TrainingConfig",
    "parse_training_config",
    "run_command",
    "train_unconditional",
    "train_unconditional_command",
    "training_argument_parser",
]
