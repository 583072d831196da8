"""Gaussian diffusion in continuous time: noise schedules γ(t) = −log SNR(t) on t ∈ [0, 1], the score SDEs they
come from, and the closed forms of the continuous-time bound (Kingma et al. 2021, "VDM"; Song et al. 2021).

Every schedule is used in the variance-preserving scale: z_t = α_t x + σ_t ε with α_t² = sigmoid(−γ_t) and
σ_t² = sigmoid(γ_t) (VDM, eq. 4). An SDE of another scale, z' = s(t) z (the VE SDE), has the same SNR and so the
same denoiser; the network always sees z_t, as EDM's input scaling does. In this scale every schedule is the VP SDE
dz = f z dt + g dw with f(t) = −½ σ_t² γ'(t) and g(t)² = σ_t² γ'(t): β(t) = σ_t² γ'(t).

The network is a `UNet2DModel` fed the timestep label (T − 1)·t, so the T-entry table of ᾱ at t_i = i/(T − 1)
(`discrete_betas`) is a stock DDPM/DDIM scheduler that samples a continuous-time model with the diffusers
pipelines, and `TableSchedule` turns any such table (a discrete DDPM's included) back into a smooth γ(t).
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config


class NoiseSchedule(torch.nn.Module, ConfigMixin):
    """γ(t) = log(σ_t²/α_t²), increasing on t ∈ [0, 1]; `forward` maps a float tensor of t to γ(t), elementwise. A
    module with a config (not a `ModelMixin`, whose import pulls in transformers): a learned one is saved with the
    model that holds it."""

    config_name = "noise_schedule.json"

    def gamma_and_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """γ(t) and γ'(t) (by automatic differentiation, so that a learned γ' is differentiable in its parameters)."""
        with torch.enable_grad():
            t = t.detach().double().requires_grad_(True)
            gamma = self(t).double()
            (derivative,) = torch.autograd.grad(gamma.sum(), t, create_graph=True)
        return gamma, derivative

    def end_points(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(γ(0), γ(1)), the ends that set the bound's decoder and prior terms, in float64 on `device`."""
        return self(torch.tensor([0.0, 1.0], dtype=torch.float64, device=device)).double()

    def inverse(self, gamma: torch.Tensor, iterations: int = 60) -> torch.Tensor:
        """t with γ(t) = `gamma` (within [γ(0), γ(1)]), by bisection of the increasing γ: 2⁻⁶⁰ in t."""
        with torch.no_grad():
            low, high = torch.zeros_like(gamma, dtype=torch.float64), torch.ones_like(gamma, dtype=torch.float64)
            for _ in range(iterations):
                middle = (low + high) / 2
                below = self(middle).double() < gamma
                low, high = torch.where(below, middle, low), torch.where(below, high, middle)
        return (low + high) / 2

    def discrete_betas(self, num_train_timesteps: int) -> list[float]:
        """β_i of the T-entry table ᾱ_i = sigmoid(−γ(i/(T − 1))): the `trained_betas` of the DDPM/DDIM scheduler that
        samples the continuous-time model, whose network takes the label i at t_i."""
        device = next(self.parameters(), torch.zeros(())).device  # a learned schedule's; fixed ones hold none
        with torch.no_grad():
            t = torch.linspace(0, 1, num_train_timesteps, dtype=torch.float64, device=device)
            alpha_bar = torch.sigmoid(-self(t).double()).cpu()
        previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        return (1 - alpha_bar / previous).tolist()


def alpha_sigma(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α_t = √sigmoid(−γ_t) and σ_t = √sigmoid(γ_t) (VDM, eq. 4)."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


class ScoreSDESchedule(NoiseSchedule):
    """The VE, VP and sub-VP SDEs of Song et al. (2021, eqs. 9, 11, 17), on their time s = s_min + (1 − s_min) t.

    With B(s) = ∫₀ˢ β = β_min s + ½ (β_max − β_min) s², the marginal q(x_s|x_0) = N(a_s x_0, b_s² I) has
    - VP:     dx = −½ β x ds + √β dw,                  a = e^{−B/2}, b² = 1 − e^{−B};
    - sub-VP: dx = −½ β x ds + √(β (1 − e^{−2B})) dw,  a = e^{−B/2}, b = 1 − e^{−B};
    - VE:     dx = √(d b²/ds) dw,                      a = 1,        b = σ_min (σ_max/σ_min)^s;
    and γ = log(b²/a²). `s_min` keeps γ(0) finite: with 10⁻³ the VP SDE starts where DDPM's linear schedule does.

    Args:
        sde: ``"vp"``, ``"subvp"`` or ``"ve"``.
        beta_min, beta_max: β(s) of the VP and sub-VP SDEs (Song et al.'s 0.1 and 20, DDPM's schedule × T).
        sigma_min, sigma_max: the VE SDE's noise levels (Song et al.'s 0.01 and 50).
        s_min: the SDE time at t = 0.
    """

    @register_to_config
    def __init__(
        self,
        sde: str = "vp",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        s_min: float = 1e-3,
    ) -> None:
        super().__init__()
        if sde not in ("vp", "subvp", "ve"):
            raise ValueError(f"sde must be 'vp', 'subvp' or 've', got {sde!r}")

    def sde_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.config.s_min + (1 - self.config.s_min) * t

    def beta_integral(self, s: torch.Tensor) -> torch.Tensor:
        """B(s) = ∫₀ˢ β of the VP and sub-VP SDEs."""
        return self.config.beta_min * s + 0.5 * (self.config.beta_max - self.config.beta_min) * s**2

    def log_scale_and_std(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log a_s and log b_s of the SDE's own marginal (see the class docstring)."""
        config = self.config
        if config.sde == "ve":
            return 0 * s, math.log(config.sigma_min) + s * math.log(config.sigma_max / config.sigma_min)
        integral = self.beta_integral(s)
        noise = -torch.expm1(-integral)  # 1 − e^{−B}
        return -0.5 * integral, (0.5 if config.sde == "vp" else 1.0) * torch.log(noise)

    def drift_diffusion(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(s) and g(s)² of the SDE dx = f x ds + g dw, as Song et al. write them (the class docstring)."""
        config = self.config
        if config.sde == "ve":
            _, log_std = self.log_scale_and_std(s)
            return torch.zeros_like(s), torch.exp(2 * log_std) * 2 * math.log(config.sigma_max / config.sigma_min)
        beta = config.beta_min + (config.beta_max - config.beta_min) * s
        diffusion = beta if config.sde == "vp" else beta * -torch.expm1(-2 * self.beta_integral(s))
        return -0.5 * beta, diffusion

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        log_scale, log_std = self.log_scale_and_std(self.sde_time(t))
        return 2 * (log_std - log_scale)


class LinearLogSNRSchedule(NoiseSchedule):
    """γ(t) = γ_min + (γ_max − γ_min) t: VDM's fixed schedule (Kingma et al. 2021, §5; γ_min = −13.3, γ_max = 5)."""

    @register_to_config
    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0) -> None:
        super().__init__()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.config.gamma_min + (self.config.gamma_max - self.config.gamma_min) * t


class MonotoneLinear(torch.nn.Linear):
    """A linear layer whose weights are |W|: increasing in every input (VDM's `DenseMonotone`)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(inputs, self.weight.abs(), self.bias)


class LearnedLogSNRSchedule(NoiseSchedule):
    """VDM's learned schedule (Kingma et al. 2021, App. H): a monotone network γ̃ rescaled to learned end points,

        γ(t) = γ_0 + (γ_1 − γ_0) shape(t),  shape(t) = (γ̃(t) − γ̃(0))/(γ̃(1) − γ̃(0)),
        γ̃(t) = l₁(t) + l₃(φ(l₂(2t − 1)))/n,

    with l₁, l₂, l₃ linear layers of non-negative weights, n hidden units and φ = 2 sigmoid − 1 (as the paper's
    code), so γ is increasing and runs from γ_0 to γ_1 exactly. It starts at the linear schedule from `gamma_min`
    to `gamma_max`. The end points set the bound's prior and decoder terms; the shape between them leaves the
    continuous-time bound unchanged and is trained to lower the variance of its estimate
    (`hfddpm.training.continuous`)."""

    @register_to_config
    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden_size: int = 1024) -> None:
        super().__init__()
        self.gamma_0 = torch.nn.Parameter(torch.tensor(float(gamma_min)))
        self.gamma_1 = torch.nn.Parameter(torch.tensor(float(gamma_max)))
        self.l1 = MonotoneLinear(1, 1)
        self.l2 = MonotoneLinear(1, hidden_size)
        self.l3 = MonotoneLinear(hidden_size, 1, bias=False)
        torch.nn.init.constant_(self.l1.weight, 1.0)
        torch.nn.init.zeros_(self.l1.bias)
        torch.nn.init.normal_(self.l3.weight, std=1e-3)

    def unnormalised(self, t: torch.Tensor) -> torch.Tensor:
        """γ̃(t), increasing."""
        t = t.reshape(-1, 1).to(self.l1.weight.dtype)
        hidden = 2 * torch.sigmoid(self.l2(2 * t - 1)) - 1
        return (self.l1(t) + self.l3(hidden) / self.config.hidden_size).reshape(-1)

    def shape(self, t: torch.Tensor) -> torch.Tensor:
        """shape(t) ∈ [0, 1], increasing, 0 at t = 0 and 1 at t = 1: where the parameters of the shape enter γ."""
        ends = self.unnormalised(torch.tensor([0.0, 1.0], device=t.device))
        return ((self.unnormalised(t) - ends[0]) / (ends[1] - ends[0])).reshape(t.shape).to(t.dtype)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.gamma_0.to(t.dtype) + (self.gamma_1 - self.gamma_0).to(t.dtype) * self.shape(t)


class TableSchedule(NoiseSchedule):
    """γ(t) of a discrete schedule's T values ᾱ_i, placed at t_i = i/(T − 1) (the network's label (T − 1) t is then
    the timestep i) and joined by the cubic Hermite spline with centred-difference slopes (Catmull–Rom): continuous
    in γ and γ', exact on a table linear in t, as `discrete_betas` writes for `LinearLogSNRSchedule`."""

    @register_to_config
    def __init__(self, alphas_cumprod: list[float]) -> None:
        super().__init__()
        alpha_bar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        gamma = torch.log1p(-alpha_bar) - torch.log(alpha_bar)
        slopes = torch.cat([gamma[1:2] - gamma[:1], (gamma[2:] - gamma[:-2]) / 2, gamma[-1:] - gamma[-2:-1]])
        self.register_buffer("knots", gamma, persistent=False)
        self.register_buffer("slopes", slopes, persistent=False)

    @classmethod
    def of_betas(cls, betas) -> TableSchedule:
        """The schedule of the table ᾱ_i = ∏_{j≤i} (1 − β_j), multiplied in float64 (diffusers multiplies in
        float32, which at γ < −12 leaves few correct digits of 1 − ᾱ)."""
        return cls(alphas_cumprod=torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0).tolist())

    @classmethod
    def of_scheduler(cls, scheduler) -> TableSchedule:
        """The schedule of a DDPM or DDIM scheduler, from its `trained_betas` when it has them (as saved, in
        float64), else from its β."""
        betas = scheduler.config.trained_betas
        return cls.of_betas(betas if betas is not None else scheduler.betas)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        position = t.double() * (len(self.knots) - 1)
        index = position.detach().floor().long().clamp(0, len(self.knots) - 2)
        u = position - index
        h00, h10, h01, h11 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u, -2 * u**3 + 3 * u**2, u**3 - u**2
        return (
            h00 * self.knots[index]
            + h10 * self.slopes[index]
            + h01 * self.knots[index + 1]
            + h11 * self.slopes[index + 1]
        )


SCHEDULES = {
    "vp": lambda: ScoreSDESchedule(sde="vp"),
    "subvp": lambda: ScoreSDESchedule(sde="subvp"),
    "ve": lambda: ScoreSDESchedule(sde="ve"),
    "linear_logsnr": LinearLogSNRSchedule,
    "learned": LearnedLogSNRSchedule,
}


def network_timestep(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """The label the network takes at time t: (T − 1) t, the discrete timestep at the table's knots."""
    return t * (num_train_timesteps - 1)


def diffusion_loss(noise: torch.Tensor, predicted_noise: torch.Tensor, gamma_derivative: torch.Tensor) -> torch.Tensor:
    """The continuous-time diffusion term of the bound for one t ~ U[0, 1], per sample, in nats:
    ½ γ'(t) ‖ε − ε̂_θ(z_t, t)‖² (VDM, eq. 17); its expectation over t is the term, whatever the schedule in between
    its end points (VDM, eq. 18). It is the likelihood-weighted score matching loss of Song et al. (2021b, Thm. 1):
    g(t)²‖s_θ − ∇log q‖² = σ_t² γ'(t) ‖ε − ε̂‖²/σ_t²."""
    squared_error = (noise.double() - predicted_noise.double()).flatten(1).pow(2).sum(1)
    return 0.5 * gamma_derivative.reshape(-1) * squared_error


def prior_kl(original: torch.Tensor, gamma_1: torch.Tensor) -> torch.Tensor:
    """KL(q(z_1|x) ‖ N(0, I)) per sample, in nats: ½ Σ (σ_1² + α_1² x² − 1 − log σ_1²) (VDM, eq. 10)."""
    alpha_sq, sigma_sq = torch.sigmoid(-gamma_1), torch.sigmoid(gamma_1)
    x = original.double().flatten(1)
    return 0.5 * (sigma_sq + alpha_sq * x**2 - 1 - torch.log(sigma_sq)).sum(1)


def probability_flow_drift(
    z: torch.Tensor, predicted_noise: torch.Tensor, gamma_derivative: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """dz/dt of the probability-flow ODE dz = [f z − ½ g² ∇log p_t(z)] dt (Song et al. 2021, eq. 13) in the VP
    scale, with ∇log p_t = −ε̂/σ_t: ½ γ'(t) σ_t (ε̂ − σ_t z)."""
    return 0.5 * gamma_derivative * sigma * (predicted_noise - sigma * z)


def discrete_decoder_nll(
    original: torch.Tensor, noise: torch.Tensor, gamma_0: torch.Tensor, num_levels: int = 256
) -> torch.Tensor:
    """−log p(x|z_0) per sample, in nats, for 8-bit data in [−1, 1] and z_0 = α_0 x + σ_0 ε: VDM's discrete
    decoder, p(x_i = v|z_0) ∝ exp(−(z_0,i − α_0 v)²/(2σ_0²)) over the `num_levels` values v (Kingma et al. 2021,
    App. C). In level units u = (z_0/α_0 + 1)(L − 1)/2 with scale s = (σ_0/α_0)(L − 1)/2 the normaliser sums
    exp(−(u − j)²/(2s²)) over the levels j within 8s + 1 of u: the rest adds less than e⁻³² of it."""
    alpha, sigma = alpha_sigma(gamma_0)
    half_range = (num_levels - 1) / 2
    x = original.double().flatten(1)
    level = ((x + 1) * half_range).round()
    position = (x + sigma / alpha * noise.double().flatten(1) + 1) * half_range  # u
    scale = sigma / alpha * half_range
    width = math.ceil(8 * float(scale.detach())) + 1
    if 2 * width + 1 < num_levels:
        neighbours = position.detach().round().unsqueeze(-1) + torch.arange(-width, width + 1, device=x.device)
    else:
        neighbours = torch.arange(num_levels, device=x.device, dtype=x.dtype)
    logits = -((position.unsqueeze(-1) - neighbours) ** 2) / (2 * scale**2)  # (B, D, neighbours)
    logits = logits.masked_fill((neighbours < 0) | (neighbours > num_levels - 1), -math.inf)
    return -(-((position - level) ** 2) / (2 * scale**2) - torch.logsumexp(logits, -1)).sum(1)
