"""Convert a Kilomatch / DANT MATLAB ``spikeInfo.mat`` into kilomatch's input folder: the
command line, and the converter's public names (it lives in :mod:`kilomatch.formats.spikeinfo`).

Command line::

    python -m kilomatch.io spikeInfo.mat OUT_FOLDER [--variable spikeInfo] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys

from .cli import command_logging, run_command
from .formats.spikeinfo import REQUIRED_FIELDS, read_spikeinfo, spikeinfo_to_folder

__all__ = ["REQUIRED_FIELDS", "read_spikeinfo", "spikeinfo_to_folder", "main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kilomatch.io",
                                     description="spikeInfo.mat -> kilomatch input folder")
    parser.add_argument("mat", help="spikeInfo.mat (MATLAB v7.3 or v7)")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--variable", default="spikeInfo", help="struct array's name")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty folder (all of it)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    def body():
        with command_logging(sys.stderr):
            out = spikeinfo_to_folder(args.mat, args.out, args.variable, args.overwrite)
        print(f"wrote {out}")

    return run_command(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
