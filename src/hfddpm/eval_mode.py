"""Evaluation mode for the length of a block."""

import contextlib

import torch


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Run with dropout off (a network fresh from training is in train mode), then restore the module's mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
