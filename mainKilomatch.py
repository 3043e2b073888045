"""Run kilomatch: ``python mainKilomatch.py [path/to/settings.json] [--debug]``.

With no argument it reads ./settings.json, which by default runs the bundled example.
Several settings files, or a folder of them, run as a batch: ``python mainKilomatch.py a.json
b.json`` is ``kilomatch batch a.json b.json`` (see ``--help`` there).
"""

import sys

from kilomatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
