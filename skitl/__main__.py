"""``python -m skitl``: the same as the ``skitl`` console command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
