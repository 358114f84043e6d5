"""``python -m funcattr.cli``: the ``funcattr`` command (as ``python -m funcattr``)."""

from funcattr.cli import main

if __name__ == "__main__":
    main(prog_name="funcattr")
