"""Run kilomatch: ``python mainKilomatch.py [path/to/settings.json] [--debug]``.

With no argument it reads ./settings.json, which by default runs the bundled example.
"""

import sys

from kilomatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
