"""``python -m alexnet`` (what ``torchrun ... -m alexnet train`` runs)."""

from alexnet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
