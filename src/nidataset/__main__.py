"""``python -m nidataset``: the same as the ``nidataset`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
