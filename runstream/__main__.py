"""``python -m runstream`` is the same as the ``runstream`` console script."""

import sys

from runstream.cli import main

sys.exit(main())
