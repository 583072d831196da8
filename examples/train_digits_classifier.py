"""Train the digits classifier behind the offline metrics and save it where hfddpm ships it.

    python examples/train_digits_classifier.py     # writes src/hfddpm/evaluation/assets/digits-classifier
    python examples/train_digits_classifier.py --output_dir my-classifier --seed 1

Prints the held-out accuracy (the 297 "test" digits); `hfddpm.evaluation.digits_classifier.HELD_OUT_ACCURACY`
states that of the shipped weights, and the tests check it.
"""

import argparse

from hfddpm.evaluation.digits_classifier import SHIPPED_WEIGHTS, train_digits_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=str(SHIPPED_WEIGHTS))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, accuracy = train_digits_classifier(epochs=args.epochs, seed=args.seed)
    model.save_pretrained(args.output_dir, safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{parameters} parameters; held-out accuracy {accuracy:.4f}; saved to {args.output_dir}")


if __name__ == "__main__":
    main()
