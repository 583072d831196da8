"""Train a classifier behind the offline metrics (the digits' or Fashion-MNIST's) and save it where hfddpm ships it.

    python examples/train_classifier.py digits     # writes src/hfddpm/evaluation/assets/digits-classifier
    python examples/train_classifier.py fashion    # writes src/hfddpm/evaluation/assets/fashion-classifier
    python examples/train_classifier.py fashion --output_dir my-classifier --seed 1

Prints the accuracy on the held-out "test" split; `hfddpm.evaluation.classifiers.HELD_OUT_ACCURACY` states that of
the shipped weights, and the tests check it.
"""

import argparse

from hfddpm.evaluation.classifiers import CLASSIFIERS, shipped_weights, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=list(CLASSIFIERS))
    parser.add_argument("--output_dir", default=None, help="default: where hfddpm ships it")
    parser.add_argument("--epochs", type=int, default=None, help="default: the name's in CLASSIFIERS")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, accuracy = train_classifier(args.name, epochs=args.epochs, seed=args.seed)
    output_dir = args.output_dir or shipped_weights(args.name)
    model.save_pretrained(output_dir, safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{parameters} parameters; held-out accuracy {accuracy:.4f}; saved to {output_dir}")


if __name__ == "__main__":
    main()
