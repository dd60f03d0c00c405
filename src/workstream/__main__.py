"""``python -m workstream``: the command line (see :mod:`workstream._cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":  # not when multiprocessing re-imports the main module
    sys.exit(main())
