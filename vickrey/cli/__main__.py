"""`python -m vickrey.cli` is `vickrey`."""

import sys

from vickrey.entry import main

sys.exit(main())
