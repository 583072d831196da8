"""Quality per step: every sampler at 10, 20, 50, 100 and 1000 steps, measured two ways, plus their speed.

    python benchmarks/sampler_study.py oracle                       # exact denoiser of a Gaussian mixture (minutes)
    python benchmarks/sampler_study.py digits outputs/ddpm-digits   # a trained digits checkpoint (~40 min)
    python benchmarks/sampler_study.py speed outputs/ddpm-digits    # wall time against stock DDPM/DDIM pipelines

oracle: the data is a two-component Gaussian mixture on 8×8 images and the network is replaced by its exact noise
predictor (`GaussianMixtureDenoiser`), so what is measured is the sampler's own error: the Fréchet distance in pixel
space between 2000 samples and the mixture's exact mean and covariance (0 for a perfect sampler, up to the ~0.002
of finite samples). digits: the Fréchet distance `fd_digits` between samples of the trained model and the training
digits, in the shipped classifier's features. Each run writes a JSON file and a plot next to it; the tables go in
benchmarks/RESULTS.md.

Samplers (all hfddpm's but the last, "linspace" timesteps so that every one starts at T − 1 and ends at t = 0):
DDPM with β̃ (fixed_small) and β (fixed_large); DDIM with η = 0 and η = 1; Analytic-DDPM and Analytic-DDIM
(Γ_t estimated from 500 images, or the checkpoint's own from `hfddpm analytic-variance`); predictor–corrector
(DDPM β̃ with one Langevin step per step, r = 0.16: twice the network evaluations); stock diffusers'
DPMSolverMultistepScheduler (2nd order, its defaults) for reference.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import diffusers
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser, HFDDPMPipeline
from hfddpm.evaluation.features import ClassifierFeatures
from hfddpm.evaluation.frechet import FeatureStatistics, frechet_distance
from hfddpm.evaluation.sample_quality import generate_samples, reference_statistics
from hfddpm.image_data import image_batches
from hfddpm.schedulers.analytic_dpm import estimate_analytic_gamma

STEPS = (10, 20, 50, 100, 1000)
# On the trained model 1000 steps of every sampler would take an hour of CPU: there only these two references run them.
DIGITS_AT_1000_STEPS = ("DDPM β̃", "DDIM η=0")


def samplers(base_config: dict, gamma: list[float], only: list[str] | None = None) -> dict[str, tuple]:
    """name → (scheduler, pipeline call options, network evaluations per step); all of them, or those in `only`."""
    config = {**base_config, "timestep_spacing": "linspace"}
    analytic = {"reverse_variance": "analytic", "analytic_gamma": gamma}
    every = {
        "DDPM β̃": (DDPMScheduler.from_config(config, reverse_variance="fixed_small"), {}, 1),
        "DDPM β": (DDPMScheduler.from_config(config, reverse_variance="fixed_large"), {}, 1),
        "DDIM η=0": (DDIMScheduler.from_config(config, reverse_variance="fixed_small"), {"eta": 0.0}, 1),
        "DDIM η=1": (DDIMScheduler.from_config(config, reverse_variance="fixed_small"), {"eta": 1.0}, 1),
        "Analytic-DDPM": (DDPMScheduler.from_config(config, **analytic), {}, 1),
        "Analytic-DDIM": (DDIMScheduler.from_config(config, **analytic), {"eta": 0.0}, 1),
        "PC (DDPM β̃ + 1 Langevin)": (
            DDPMScheduler.from_config(config, reverse_variance="fixed_small"),
            {"corrector_steps": 1},
            2,
        ),
        "DPM-Solver++(2M) (stock)": (
            diffusers.DPMSolverMultistepScheduler.from_config(base_config, timestep_spacing="linspace"),
            {},
            1,
        ),
    }
    unknown = set(only or ()) - set(every)
    if unknown:
        raise SystemExit(f"unknown samplers {sorted(unknown)}; choose from {list(every)}")
    return {name: value for name, value in every.items() if not only or name in only}


def sample(unet, scheduler, options: dict, steps: int, count: int, seed: int = 0) -> torch.Tensor:
    pipe = HFDDPMPipeline(unet=unet, scheduler=scheduler)
    return generate_samples(
        pipe, count, batch_size=500, num_inference_steps=steps, seed=seed, progress_bar=False, **options
    )


def mixture_denoiser(scheduler) -> GaussianMixtureDenoiser:
    """Two modes on 8×8 images, weights 0.3/0.7, each N(μ_k, 0.1² I): a stroke and its negative."""
    grid = torch.linspace(-1, 1, 8, dtype=torch.float64)
    pattern = 0.5 * torch.exp(-((grid[:, None] - 0.3) ** 2 + grid[None, :] ** 2) / 0.3)
    means = torch.stack([pattern, -pattern]).unsqueeze(1)
    return GaussianMixtureDenoiser.for_scheduler(scheduler, means, [0.1, 0.1], [0.3, 0.7])


def mixture_statistics(denoiser: GaussianMixtureDenoiser) -> FeatureStatistics:
    """Exact mean and covariance of the mixture, flattened: Σ_k w_k (s_k² I + μ_k μ_kᵀ) − m mᵀ."""
    weights = denoiser.log_weights.exp()
    means = denoiser.component_means.flatten(1)
    dim = means.shape[1]
    mean = weights @ means
    second = sum(
        w * (s**2 * torch.eye(dim, dtype=torch.float64) + torch.outer(m, m))
        for w, s, m in zip(weights, denoiser.component_stds, means, strict=True)
    )
    return FeatureStatistics(mean, second - torch.outer(mean, mean), count=10**9)


def measure(name: str, steps: int, nfe: int, compute, results: dict, path: Path) -> None:
    """Record one sampler's distance at one step count (NaN if it diverged), and rewrite the JSON file."""
    start = time.perf_counter()
    try:
        distance = compute()
    except ValueError as error:  # non-finite samples
        print(f"{name:28s} {steps:5d} steps  diverged: {error}", flush=True)
        distance = float("nan")
    results.setdefault(name, {})[steps] = {"fd": distance, "nfe": nfe}
    print(f"{name:28s} {steps:5d} steps  {distance:.4f}  ({time.perf_counter() - start:.1f} s)", flush=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False))


def sample_floor(denoiser, exact: FeatureStatistics, seeds: range = range(5)) -> float:
    """The distance of 2000 exact draws of the mixture from its exact statistics, averaged over `seeds`: the
    finite-sample floor of a perfect sampler."""
    distances = [
        frechet_distance(
            FeatureStatistics.of(denoiser.sample_data(2000, torch.Generator().manual_seed(seed)).flatten(1)), exact
        )
        for seed in seeds
    ]
    return sum(distances) / len(distances)


def run_oracle(output: Path, only: list[str] | None = None) -> dict:
    base = DDPMScheduler()
    denoiser = mixture_denoiser(base)
    exact = mixture_statistics(denoiser)
    data = denoiser.sample_data(500, torch.Generator().manual_seed(1))
    gamma = estimate_analytic_gamma(denoiser, base, [data], progress_bar=False).tolist()
    results = {"exact draws (the floor)": {"2000 draws": {"fd": sample_floor(denoiser, exact), "nfe": 0}}}
    for name, (scheduler, options, nfe_per_step) in samplers(dict(base.config), gamma, only).items():
        for steps in STEPS:

            def distance(scheduler=scheduler, options=options, steps=steps):
                images = sample(denoiser, scheduler, options, steps, 2000)
                return frechet_distance(FeatureStatistics.of((images * 2 - 1).flatten(1)), exact)

            measure(name, steps, steps * nfe_per_step, distance, results, output / "sampler_study_oracle.json")
    return results


def run_digits(checkpoint: str, output: Path, only: list[str] | None = None) -> dict:
    pipe = HFDDPMPipeline.from_pretrained(checkpoint)
    unet = pipe.unet.eval()
    gamma = pipe.scheduler.config.get("analytic_gamma")  # kept by `hfddpm analytic-variance`
    if gamma is None:
        batches = image_batches("digits", "train", 8, 1, batch_size=500, max_images=500)
        gamma = estimate_analytic_gamma(unet, pipe.scheduler, batches).tolist()
    extractor = ClassifierFeatures()
    reference = reference_statistics(extractor, "digits", "train", 8, 1)
    results = {}
    for name, (scheduler, options, nfe_per_step) in samplers(dict(pipe.scheduler.config), gamma, only).items():
        for steps in [s for s in STEPS if s < 1000 or name in DIGITS_AT_1000_STEPS]:

            def distance(scheduler=scheduler, options=options, steps=steps):
                images = sample(unet, scheduler, options, steps, 500)
                return frechet_distance(FeatureStatistics.of(extractor(images)), reference)

            measure(name, steps, steps * nfe_per_step, distance, results, output / "sampler_study_digits.json")
    return results


def run_speed(checkpoint: str, steps: int = 50, batch_size: int = 64, repeats: int = 7) -> dict:
    """Seconds per image of HFDDPMPipeline and stock DDPMPipeline/DDIMPipeline on the same UNet, alternated, and of
    the bare UNet loop (the same network calls, no scheduler): the pipelines' own overhead is the difference."""
    unet = HFDDPMPipeline.from_pretrained(checkpoint).unet.eval()
    size = unet.config.sample_size
    noise = torch.randn(batch_size, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    timesteps = DDPMScheduler(timestep_spacing="leading")
    timesteps.set_timesteps(steps)

    @torch.no_grad()
    def bare():
        for t in timesteps.timesteps:
            unet(noise, t)

    runs = {"bare UNet loop": bare}
    channels_last = HFDDPMPipeline(
        unet=copy.deepcopy(unet).to(memory_format=torch.channels_last), scheduler=DDIMScheduler()
    )
    channels_last.set_progress_bar_config(disable=True)
    for name, stock_pipeline, ours in (
        ("DDPM", diffusers.DDPMPipeline, DDPMScheduler),
        ("DDIM", diffusers.DDIMPipeline, DDIMScheduler),
    ):
        stock = stock_pipeline(unet=unet, scheduler=getattr(diffusers, ours.__name__)())
        hfddpm = HFDDPMPipeline(unet=unet, scheduler=ours())
        for pipe in (stock, hfddpm):
            pipe.set_progress_bar_config(disable=True)
        runs[f"stock {name}Pipeline"] = _caller(stock, batch_size, steps)
        runs[f"HFDDPMPipeline + {ours.__name__}"] = _caller(hfddpm, batch_size, steps)
    runs["HFDDPMPipeline + DDIMScheduler, channels_last UNet"] = _caller(channels_last, batch_size, steps)
    compiled = HFDDPMPipeline(unet=torch.compile(copy.deepcopy(unet)), scheduler=DDIMScheduler())
    compiled.set_progress_bar_config(disable=True)
    runs["HFDDPMPipeline + DDIMScheduler, torch.compile UNet"] = _caller(compiled, batch_size, steps)
    for name, run in runs.items():  # warm-up (and compilation)
        start = time.perf_counter()
        run()
        print(f"{name:52s} first call {time.perf_counter() - start:6.1f} s", flush=True)
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    bare_time = medians["bare UNet loop"]
    results = {}
    for name, value in medians.items():
        overhead = (value - bare_time) / steps * 1e3
        results[name] = {"ms_per_image": value / batch_size * 1e3, "overhead_ms_per_step": overhead}
        print(f"{name:52s} {value / batch_size * 1e3:7.2f} ms/image   overhead {overhead:6.2f} ms/step", flush=True)
    return results


def _caller(pipe, batch_size, steps):
    def run():
        pipe(batch_size=batch_size, num_inference_steps=steps, generator=torch.manual_seed(0), output_type="np")

    return run


def plot(results: dict, path: Path, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, by_steps in results.items():
        nfe = [value["nfe"] for value in by_steps.values()]
        distance = [max(value["fd"], 1e-4) for value in by_steps.values()]
        axis.loglog(nfe, distance, marker="o", label=name)
    axis.set(xlabel="network evaluations per image", ylabel=ylabel, title=title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("oracle", "digits", "speed"))
    parser.add_argument("checkpoint", nargs="?", default="outputs/ddpm-digits")
    parser.add_argument("--output_dir", default="benchmarks")
    parser.add_argument("--samplers", nargs="+", help="run only these samplers (names as in the table)")
    args = parser.parse_args()
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if args.part == "oracle":
        results = run_oracle(output, args.samplers)
        plot(
            results,
            output / "sampler_study_oracle.png",
            "Fréchet distance to the exact mixture (pixels)",
            "Samplers with the exact denoiser of a Gaussian mixture",
        )
    elif args.part == "digits":
        results = run_digits(args.checkpoint, output, args.samplers)
        plot(
            results,
            output / "sampler_study_digits.png",
            "fd_digits (lower is better)",
            f"Samplers on the trained digits model ({args.checkpoint})",
        )
    else:
        results = run_speed(args.checkpoint)
    (output / f"sampler_study_{args.part}.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"written to {output / f'sampler_study_{args.part}.json'}")


if __name__ == "__main__":
    main()
