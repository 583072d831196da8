"""Training: data, losses and the pieces of the training loop."""
