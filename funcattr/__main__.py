"""``python -m funcattr``: the ``funcattr`` command (see :mod:`funcattr.cli`)."""

from funcattr.cli import main

if __name__ == "__main__":
    main(prog_name="funcattr")
