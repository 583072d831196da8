"""Class conditioning: which networks take class labels, the "no label" index, and classifier-free guidance.

A class-conditional network is a `UNet2DModel` (or a model with the same config keys) whose `num_class_embeds` is
the number of classes plus one: labels 0 … K−1 are the classes and K, the last index, means "no label" (∅). A
network trained with label dropout (Ho & Salimans 2022) learns both ε_θ(x_t, t, c) and ε_θ(x_t, t, ∅), and the
guided prediction mixes them (`guided_prediction`). Sampling and evaluation call networks through `predict`, so a
class-conditional network given no labels is the unconditional model ε_θ(x_t, t, ∅); training calls them through
`call_network`, with the labels it has dropped.
"""

from __future__ import annotations

import torch


def num_classes(model: torch.nn.Module) -> int | None:
    """K, the classes `model` is conditioned on (its `num_class_embeds` − 1), or None for an unconditional model
    (one without a config counts as unconditional). Only a learned class embedding (`class_embed_type` None) has a
    "no label" index: the other kinds of `UNet2DModel` conditioning embed a continuous value, and are refused."""
    config = getattr(model, "config", None) or {}
    if config.get("class_embed_type") is not None:
        raise ValueError(
            f"the network's class_embed_type is {config['class_embed_type']!r}; hfddpm conditions on class labels "
            "through a learned embedding only (class_embed_type None, num_class_embeds = classes + 1)"
        )
    embeds = config.get("num_class_embeds")
    return None if embeds is None else embeds - 1


def every_class(count: int, classes: int) -> list[int]:
    """`count` labels that draw every one of `classes` classes alike: sample i is of class i mod K (the sample grids
    and evaluations of a class-conditional model)."""
    return [i % classes for i in range(count)]


def call_network(
    model: torch.nn.Module, sample: torch.Tensor, timestep: int | torch.Tensor, class_labels: torch.Tensor | None
) -> torch.Tensor:
    """`model(sample, timestep).sample`, passing `class_labels` when there are any; reads no config, so it also calls
    a network wrapped for data-parallel training."""
    if class_labels is None:
        return model(sample, timestep).sample
    return model(sample, timestep, class_labels=class_labels).sample


def predict(
    model: torch.nn.Module,
    sample: torch.Tensor,
    timestep: int | torch.Tensor,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The network's output `model(sample, timestep).sample`, with `class_labels` for a class-conditional model, which
    given no labels is called with the "no label" index K: its unconditional prediction ε_θ(x_t, t, ∅)."""
    classes = num_classes(model)
    if classes is not None and class_labels is None:
        class_labels = torch.full((len(sample),), classes, dtype=torch.long, device=sample.device)
    return call_network(model, sample, timestep, class_labels)


def guided_prediction(
    conditional: torch.Tensor, unconditional: torch.Tensor, guidance_scale: float, channels: int
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6, written as in GLIDE and diffusers):
    ε̂ = ε̂_∅ + w (ε̂_c − ε̂_∅) on the first `channels` output channels (the prediction), while any further channels
    (a learned variance) are the conditional network's, as in GLIDE (Nichol et al. 2022, §2.3).

    w = 1 returns the conditional output and w = 0 the unconditional one (variance included), exactly. An x_0 or v
    prediction is guided by the same formula: each is an affine function of ε̂ at fixed (x_t, t), and affine maps
    keep weights summing to one.
    """
    if guidance_scale in (0, 1):  # u + 1·(c − u) need not round to c
        return conditional if guidance_scale == 1 else unconditional
    guided = unconditional[:, :channels] + guidance_scale * (conditional[:, :channels] - unconditional[:, :channels])
    return torch.cat([guided, conditional[:, channels:]], dim=1)
