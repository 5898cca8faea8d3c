"""``python -m ptyframe``: the same as the ``ptyframe`` command."""

from ptyframe.apps.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
