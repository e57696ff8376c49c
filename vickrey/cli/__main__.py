"""`python -m vickrey.cli` is `vickrey`."""

import sys

from vickrey.cli import main

sys.exit(main())
