"""The table of `benchmarks/continuous_study.sh` and the plot of the models' noise schedules γ(t) = −log SNR(t):

python benchmarks/continuous_study.py outputs/continuous      # prints the table, writes the plot
"""

import json
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from hfddpm import HFDDPMPipeline
from hfddpm.schedulers.continuous_time import LinearLogSNRSchedule, ScoreSDESchedule, TableSchedule

MODELS = {
    "simple": "L_simple, discrete",
    "hybrid": "L_hybrid, learned_range, discrete",
    "vlb": "L_vlb, importance-sampled t, discrete",
    "vlb-fourier": "L_vlb, importance-sampled t, discrete, Fourier features",
    "vdm-fixed": "VDM, fixed linear γ",
    "vdm-learned": "VDM, learned γ",
    "vdm-fixed-fourier": "VDM, fixed linear γ, Fourier features",
    "vdm-learned-fourier": "VDM, learned γ, Fourier features",
    "vp-likelihood": "VP SDE, likelihood weighting, importance-sampled t",
}
PLOT = Path(__file__).parent / "continuous_schedules.png"


def value(report: dict, metric: str) -> str:
    if metric not in report["metrics"]:
        return ""
    error = report["details"][metric].get("standard_error")
    return f"{report['metrics'][metric]:.3f}" + (f" ± {error:.3f}" if error is not None else "")


def table(root: Path) -> str:
    lines = [
        "| model | discrete bound | continuous bound | ODE −log p | ODE − continuous bound | fd_digits, 50 steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in MODELS.items():
        report = json.loads((root / "eval" / name / "evaluation.json").read_text())
        gap = report["metrics"]["nll_ode"] - report["metrics"]["bits_per_dim_continuous"]
        cells = [value(report, metric) for metric in ("bits_per_dim", "bits_per_dim_continuous", "nll_ode")]
        lines.append(f"| {label} | {' | '.join(cells)} | {gap:+.3f} | {report['metrics']['fd_digits']:.2f} |")
    return "\n".join(lines)


def learned(run: Path) -> TableSchedule:
    """The schedule a run's pipeline holds, as its table."""
    return TableSchedule.of_scheduler(HFDDPMPipeline.from_pretrained(run).scheduler)


def plot(root: Path) -> None:
    t = torch.linspace(0, 1, 501, dtype=torch.float64)
    schedules = {
        "VP SDE (= DDPM linear)": ScoreSDESchedule(sde="vp"),
        "sub-VP SDE": ScoreSDESchedule(sde="subvp"),
        "VE SDE": ScoreSDESchedule(sde="ve"),
        "VDM fixed (linear γ)": LinearLogSNRSchedule(),
        "VDM learned (digits)": learned(root / "vdm-learned"),
        "VDM learned, Fourier features (digits)": learned(root / "vdm-learned-fourier"),
    }
    figure = Figure(figsize=(6.5, 4))
    axes = figure.subplots()
    for label, schedule in schedules.items():
        with torch.no_grad():
            axes.plot(t, schedule(t), label=label, lw=2 if "learned" in label else 1)
    axes.set(xlabel="t", ylabel="γ(t) = −log SNR(t)", title="Noise schedules in continuous time")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    plot(root)
    print(table(root))
