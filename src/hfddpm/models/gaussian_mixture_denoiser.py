"""The exact denoiser of Gaussian-mixture data: a stand-in for the UNet that has no training error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from diffusers import ConfigMixin, ModelMixin  # the pipeline loader finds ModelMixin in this module by name
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from ..schedulers.continuous_time import TableSchedule
from ..schedulers.gaussian_diffusion import convert_prediction

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


class GaussianMixtureDenoiser(ModelMixin, ConfigMixin):
    """Bayes-optimal prediction for data x_0 ~ Σ_k w_k N(μ_k, Σ_k), called like a `UNet2DModel`.

    Under q(x_t|x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) the noisy data is the mixture Σ_k w_k N(√ᾱ_t μ_k, V_k) with
    V_k = ᾱ_t Σ_k + (1 − ᾱ_t) I, and the minimiser of E‖ε − ε_θ(x_t, t)‖² is
    E[ε|x_t] = Σ_k r_k(x_t) √(1 − ᾱ_t) V_k⁻¹ (x_t − √ᾱ_t μ_k), with r_k the posterior responsibilities
    (Tweedie's formula), computed in the eigenbasis of each Σ_k. A fractional timestep takes ᾱ from the smooth
    continuous schedule of the table (`TableSchedule`), as continuous-time evaluation calls networks. It is
    returned as ε, x_0 or v according to `prediction_type`. Σ_k = s_k² I unless `covariances` are given; a
    component with s_k = 0 is a point mass, and N(0, I) is the single component μ = 0, s = 1.

    With `class_conditional`, the component is the class label: the model takes `class_labels` as a class-
    conditional `UNet2DModel` does (`num_class_embeds` = K + 1, see `hfddpm.conditioning`), label k giving the
    exact denoiser of component k alone and label K ("no label") that of the whole mixture.

    Args:
        means: one image-shaped mean per component, as nested lists of shape (K, C, H, W).
        stds: the K standard deviations s_k (ignored where `covariances` are given).
        weights: the K mixture weights (normalised here).
        alphas_cumprod: ᾱ_t of the scheduler the model is paired with (`scheduler.alphas_cumprod`).
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        covariances: optional full covariances Σ_k of the flattened images, shape (K, D, D) with D = C·H·W.
        class_conditional: take the component as a class label.
    """

    @register_to_config
    def __init__(
        self,
        means: Sequence,
        stds: Sequence[float],
        weights: Sequence[float],
        alphas_cumprod: Sequence[float],
        prediction_type: str = "epsilon",
        covariances: Sequence | None = None,
        class_conditional: bool = False,
    ) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 4 or not len(means) == len(stds) == len(weights):
            raise ValueError("means must have shape (K, C, H, W), with one std and one weight per component")
        num_components, dim = len(means), means[0].numel()
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if covariances is None:
            eigenvalues, eigenvectors = (stds**2)[:, None].expand(-1, dim), torch.eye(dim, dtype=torch.float64)
            eigenvectors = eigenvectors.expand(num_components, dim, dim)
        else:
            covariances = torch.as_tensor(covariances, dtype=torch.float64)
            if covariances.shape != (num_components, dim, dim):
                raise ValueError(f"covariances must have shape (K, D, D) = {(num_components, dim, dim)}")
            eigenvalues, eigenvectors = torch.linalg.eigh(covariances)
            eigenvalues = eigenvalues.clamp(min=0)  # round-off of a positive semi-definite matrix
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("component_means", means, persistent=False)
        self.register_buffer("component_stds", stds, persistent=False)
        self.register_buffer("component_eigenvalues", eigenvalues.contiguous(), persistent=False)  # (K, D)
        self.register_buffer("component_eigenvectors", eigenvectors.contiguous(), persistent=False)  # (K, D, D)
        self.register_buffer("log_weights", torch.log(weights / weights.sum()), persistent=False)
        self.register_buffer(
            "schedule_alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64), persistent=False
        )
        self.continuous_schedule = TableSchedule(alphas_cumprod=list(alphas_cumprod))
        channels = means.shape[1]
        self.register_to_config(sample_size=tuple(means.shape[2:]), in_channels=channels, out_channels=channels)
        self.register_to_config(num_class_embeds=num_components + 1 if class_conditional else None)

    @classmethod
    def for_scheduler(
        cls,
        scheduler: SchedulerMixin,
        means: torch.Tensor,
        stds: Sequence[float],
        weights: Sequence[float] | None = None,
        covariances: torch.Tensor | None = None,
        class_conditional: bool = False,
    ) -> GaussianMixtureDenoiser:
        """The exact denoiser for `scheduler`'s noise schedule and prediction type."""
        return cls(
            means=torch.as_tensor(means).tolist(),
            stds=[float(std) for std in stds],
            weights=[1.0] * len(means) if weights is None else [float(weight) for weight in weights],
            alphas_cumprod=scheduler.alphas_cumprod.tolist(),
            prediction_type=scheduler.config.prediction_type,
            covariances=None if covariances is None else torch.as_tensor(covariances).tolist(),
            class_conditional=class_conditional,
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        x = sample.to(torch.float64)
        t = torch.as_tensor(timestep, device=x.device).reshape(-1)
        if t.is_floating_point():
            position = t.double() / (len(self.schedule_alphas_cumprod) - 1)
            alpha_bar = torch.sigmoid(-self.continuous_schedule(position)).reshape(-1, 1).expand(len(x), 1)
        else:
            alpha_bar = self.schedule_alphas_cumprod[t].reshape(-1, 1).expand(len(x), 1)  # (B, 1)
        flat = x.reshape(len(x), 1, -1)  # (B, 1, D)
        centred = flat - alpha_bar.unsqueeze(-1).sqrt() * self.component_means.flatten(1)  # (B, K, D)
        # In each component's eigenbasis V_k is diagonal: ᾱ_t λ_k + 1 − ᾱ_t.
        rotated = torch.einsum("kde,bkd->bke", self.component_eigenvectors, centred)  # U_kᵀ (x − √ᾱ μ_k)
        variance = alpha_bar.unsqueeze(-1) * self.component_eigenvalues + (1 - alpha_bar.unsqueeze(-1))  # (B, K, D)
        log_likelihood = -0.5 * (rotated**2 / variance + torch.log(2 * math.pi * variance)).sum(-1)
        responsibilities = torch.softmax(self._log_weights(class_labels, len(x)) + log_likelihood, dim=1)  # (B, K)
        scores = torch.einsum("kde,bke->bkd", self.component_eigenvectors, rotated / variance)  # V_k⁻¹ (x − √ᾱ μ_k)
        epsilon = (responsibilities.unsqueeze(-1) * scores).sum(1) * (1 - alpha_bar).sqrt()
        epsilon = epsilon.reshape(x.shape)
        prediction = convert_prediction(
            epsilon, x, alpha_bar.reshape(-1, 1, 1, 1), "epsilon", self.config.prediction_type
        ).to(sample.dtype)
        if not return_dict:
            return (prediction,)
        return UNet2DOutput(sample=prediction)

    def _log_weights(self, class_labels: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """log w_k per sample (B, K): the mixture's, or for a class label k only component k's."""
        if self.config.num_class_embeds is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were given to a GaussianMixtureDenoiser built without class_conditional"
                )
            return self.log_weights.expand(batch_size, -1)
        if class_labels is None:
            raise ValueError("class_labels should be provided when doing class conditioning")
        labels = torch.as_tensor(class_labels, device=self.log_weights.device).long().reshape(-1).expand(batch_size)
        one_component = torch.nn.functional.one_hot(labels, len(self.log_weights) + 1)[:, :-1].bool()
        labelled = torch.where(one_component, 0.0, -math.inf).to(self.log_weights)
        unlabelled = (labels == len(self.log_weights)).unsqueeze(1)
        return torch.where(unlabelled, self.log_weights, labelled)

    def sample_data(
        self, num_samples: int, generator: torch.Generator | None = None, component: int | None = None
    ) -> torch.Tensor:
        """Draw x_0 from the mixture, or from one `component` (float64, on the model's device)."""
        if component is None:
            components = torch.multinomial(
                self.log_weights.exp().cpu(), num_samples, replacement=True, generator=generator
            )
        else:
            components = torch.full((num_samples,), component)
        shape = self.component_means.shape[1:]
        noise = torch.randn((num_samples, shape.numel()), generator=generator, dtype=torch.float64)
        components, noise = components.to(self.component_means.device), noise.to(self.component_means.device)
        scaled = self.component_eigenvalues[components].sqrt() * noise  # in the eigenbasis: N(0, diag λ_k)
        offsets = torch.einsum("bde,be->bd", self.component_eigenvectors[components], scaled)
        return self.component_means[components] + offsets.reshape(num_samples, *shape)
