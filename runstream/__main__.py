"""``python -m runstream`` and the ``runstream`` console script.

The SIGTERM handling of the start-up window is installed before anything heavy is imported
(runstream/startup.py says why).
"""

from __future__ import annotations

import sys

from runstream import startup


def main() -> int:
    startup.install()
    from runstream.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
