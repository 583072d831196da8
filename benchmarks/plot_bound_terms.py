"""Several models' bound terms L_t against t in one figure, from the evaluation.json files `hfddpm evaluate` writes.

python benchmarks/plot_bound_terms.py OUTPUT.png LABEL=path/to/evaluation.json [LABEL=...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(output: str, labelled_paths: list[str]) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for item in labelled_paths:
        label, _, path = item.partition("=")
        bound = json.loads(Path(path).read_text())["details"]["bits_per_dim"]
        terms = [max(value, 1e-6) for value in bound["terms_bits_per_dim"]]
        # Log-log in t + 1: the models differ in the first few dozen terms, where most of the bound is.
        timesteps = [t + 1 for t in bound["timesteps"]]
        axis.loglog(timesteps, terms, lw=1, label=f"{label}: {bound['bits_per_dim']:.3f} bits/dim")
    axis.set(
        xlabel="timestep t + 1 (t = 0 is the decoder L_0)",
        ylabel="L_t (bits/dim)",
        title="Terms of the variational bound, held-out digits",
    )
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    print(f"written to {output}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or any("=" not in item for item in sys.argv[2:]):
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
