"""Command line: ``python mainKilomatch.py [SETTINGS]`` or ``kilomatch [SETTINGS]``.

Bad input or settings end with the messages and exit status 2, without a traceback
(``--debug``, or ``"debug": true`` in the settings, shows it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import KilomatchError
from .parameters import BY_NAME


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kilomatch", description="Track neurons across sessions.")
    p.add_argument("settings", nargs="?", default="settings.json",
                   help="settings file (JSON with comments); default ./settings.json")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def ensure_example(settings) -> None:
    """Make the bundled example dataset when the default settings point to it and it is missing."""
    default = Path(BY_NAME["path_to_data"].default)
    base = settings.source.resolve().parent if settings.source else Path.cwd()
    if settings.path_to_data == (base / default).resolve() and not settings.path_to_data.exists():
        from .example import make_example
        print(f"kilomatch: the example dataset is made on first use: writing {settings.path_to_data}",
              flush=True)
        make_example(settings.path_to_data)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    debug = args.debug
    try:
        from .settings import load
        settings = load(args.settings)
        debug = debug or settings.debug
        ensure_example(settings)
        from .pipeline import run
        run(settings)
    except KilomatchError as err:
        if debug:
            raise
        print(f"kilomatch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kilomatch: interrupted; Output.npz was not written, so the results are incomplete",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
