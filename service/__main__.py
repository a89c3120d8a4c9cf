"""``python -m service`` is the same as the ``runstream`` console script."""

import sys

from service.cli import main

sys.exit(main())
