"""`python -m vickrey` is `vickrey`."""

import sys

from vickrey.entry import main

sys.exit(main())
