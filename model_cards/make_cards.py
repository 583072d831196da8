"""Write the model cards of hfddpm's reference models from their run folders.

    python model_cards/make_cards.py                     # every reference model, from outputs/
    python model_cards/make_cards.py --runs other/outputs ddpm-digits

Each card is the package's own (`hfddpm.model_cards.model_card`) for one run folder, with the numbers the folder
records: `training_info.json` (hardware, time, final loss) and `evaluation.json` (what `hfddpm evaluate RUN` measured
and recorded). The run's sample grid is copied beside its card. A missing run folder stops the script before it
writes anything.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from hfddpm import durable
from hfddpm.model_cards import SAMPLE_GRID, model_card

CARDS = Path(__file__).resolve().parent
# Card name → run folder under --runs, as the README's and benchmarks/RESULTS.md's commands name them.
REFERENCE_MODELS = {
    "ddpm-digits": "ddpm-digits",
    "ddpm-digits-v": "ddpm-digits-v",
    "ddpm-digits-cond": "ddpm-digits-cond",
    "progressive-digits-v-4-steps": "progressive-digits-v/steps-4",
    "consistency-digits-v": "consistency-digits-v",
    "fashion-cpu": "fashion-cpu",
    "autoencoder-fashion": "autoencoder-fashion",
    "latent-fashion": "latent-fashion",
    "lsgm-fashion": "lsgm-fashion",
    "vdm-digits": "continuous/vdm-learned-fourier",
}


def write_card(run: Path, name: str, relative: str, cards: Path = CARDS) -> Path:
    """Write `cards/<name>.md`, the card of the run folder `run` (known to users as `outputs/<relative>`), and copy
    its sample grid to `cards/<name>.png`; both atomically. Returns the card's path."""
    grid = run / SAMPLE_GRID
    cards.mkdir(parents=True, exist_ok=True)
    if grid.is_file():
        with durable.replacing(cards / f"{name}.png") as temporary:
            shutil.copyfile(grid, temporary)
    card = model_card(run, f"outputs/{relative}", sample_grid_link=f"{name}.png", model_name=name)
    durable.write_text(cards / f"{name}.md", str(card))
    return cards / f"{name}.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help=f"cards to write, of {list(REFERENCE_MODELS)} (default: every one)")
    parser.add_argument("--runs", default="outputs", help="the folder holding the run folders (default outputs)")
    parser.add_argument("--cards", default=str(CARDS), help="where the cards go (default: this folder)")
    args = parser.parse_args(argv)
    names = args.models or list(REFERENCE_MODELS)
    try:
        check_inputs(names, Path(args.runs), Path(args.cards))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name in names:
        card = write_card(Path(args.runs) / REFERENCE_MODELS[name], name, REFERENCE_MODELS[name], Path(args.cards))
        print(f"wrote {card}")
    return 0


def check_inputs(names: list[str], runs: Path, cards: Path) -> None:
    """Every named model is known and its run folder holds a pipeline, and the cards' folder can be written."""
    if unknown := sorted(set(names) - set(REFERENCE_MODELS)):
        raise ValueError(f"unknown reference models {unknown}; choose from {list(REFERENCE_MODELS)}")
    for name in names:
        run = runs / REFERENCE_MODELS[name]
        if not (run / "model_index.json").is_file():
            raise ValueError(
                f"{run} holds no run (no model_index.json); train it as model_cards/README.md says, or pass --runs "
                "with the folder that holds it"
            )
    durable.check_output_folder(cards, "--cards")


if __name__ == "__main__":
    sys.exit(main())
