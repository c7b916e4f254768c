"""``python -m pet_dl``: the command line (see :mod:`pet_dl.cli`)."""

from pet_dl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
