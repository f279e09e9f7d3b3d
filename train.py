"""Train X-Dyna. Not implemented yet: training lands with its issue."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("train.py: training is not implemented yet; it lands with the training issue "
          "(objective, train_step, Orbax checkpoints, host loop).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
