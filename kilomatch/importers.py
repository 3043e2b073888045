"""Build kilomatch's input folder from spike-sorting outputs, one per session.

Three kinds of session are read, all sessions of one call being of one kind; each reader lives
in :mod:`kilomatch.formats` and is re-exported here:

- **Kilosort / phy folders** (:func:`import_phy`, :mod:`kilomatch.formats.phy`): units chosen
  by their labels, mean waveforms computed from the raw recording named in ``params.py`` (why
  not Kilosort's templates: see that module).
- **SpikeInterface** (:func:`import_spikeinterface`, :mod:`kilomatch.formats.spikeinterface`):
  a saved ``SortingAnalyzer`` per session, with its ``templates`` extension.
- **NWB** (:func:`import_nwb`, :mod:`kilomatch.formats.nwb`): the ``units`` table of an NWB
  file per session.

Each writes the folder described in README 'Input folder' and ``units_source.csv`` (unit,
session, session_path, original_unit_id) through
:func:`kilomatch.formats.sessions.write_input_folder`.

Command line::

    python -m kilomatch.importers {phy,spikeinterface,nwb} OUT SESSION1 SESSION2 ... [options]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import command_logging, run_command
from .formats.folder import UNITS_SOURCE as SOURCE_FILE
from .formats.nwb import import_nwb
from .formats.phy import UNIT_CHOICES, import_phy, read_params_py
from .formats.sessions import SessionUnits, write_input_folder
from .formats.spikeinterface import import_spikeinterface

__all__ = [
    "import_phy",
    "import_spikeinterface",
    "import_nwb",
    "read_params_py",
    "SessionUnits",
    "write_input_folder",
    "main",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kilomatch.importers",
        description="Build a kilomatch input folder from one spike sorting per session "
                    "(sessions in order).")
    sub = p.add_subparsers(dest="kind", required=True)

    def common(sp):
        sp.add_argument("out", help="folder to write")
        sp.add_argument("sessions", nargs="+", help="one per session, in session order")
        sp.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
        sp.add_argument("--debug", action="store_true", help="show full tracebacks")

    phy = sub.add_parser("phy", help="Kilosort / phy output folders")
    common(phy)
    phy.add_argument("--units", choices=UNIT_CHOICES, default="good",
                     help="which clusters: good, all_but_noise or all by phy / Kilosort label "
                          "(default good); bombcell_good or bombcell_all_but_noise by "
                          "bombcell's cluster_bc_unitType.tsv")
    phy.add_argument("--n-spikes", type=int, default=500, help="spikes averaged per unit")
    phy.add_argument("--seed", type=int, default=0, help="seed of the spike subsets")
    phy.add_argument("--gain-uv", type=float, default=None,
                     help="uV per bit of the raw files (default: read from the SpikeGLX .meta "
                          "beside each raw file or Open Ephys's structure.oebin; an error "
                          "when there is neither)")
    phy.add_argument("--highpass-hz", type=float, default=300.0,
                     help="high-pass cutoff; 0 for none (not applied when params.py says "
                          "hp_filtered = True)")
    phy.add_argument("--n-before", type=int, default=None, help="samples before the spike (20)")
    phy.add_argument("--n-after", type=int, default=None, help="samples from the spike on (41)")

    si = sub.add_parser("spikeinterface", help="saved SpikeInterface SortingAnalyzers")
    common(si)
    si.add_argument("--gain-uv", type=float, default=None,
                    help="uV per unit, only for analyzers not scaled to uV (default: the "
                         "recording's gain_to_uV saved in the analyzer)")

    nwb = sub.add_parser("nwb", help="NWB files with a units table")
    common(nwb)
    nwb.add_argument("--electrode-groups", nargs="+", default=None,
                     help="keep only these electrode groups (one probe)")
    nwb.add_argument("--waveform-unit", default=None,
                     help="unit of waveform_mean (volts, millivolts, microvolts)")
    return p

def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    def body():
        with command_logging(sys.stderr):  # progress, and the templates fallback's warning
            if args.kind == "phy":
                out = import_phy(args.sessions, args.out, units=args.units,
                                 n_spikes=args.n_spikes, seed=args.seed, gain_uv=args.gain_uv,
                                 highpass_hz=args.highpass_hz or None, n_before=args.n_before,
                                 n_after=args.n_after, overwrite=args.overwrite)
            elif args.kind == "spikeinterface":
                out = import_spikeinterface(args.sessions, args.out, gain_uv=args.gain_uv,
                                            overwrite=args.overwrite)
            else:
                out = import_nwb(args.sessions, args.out,
                                 electrode_groups=args.electrode_groups,
                                 waveform_unit=args.waveform_unit, overwrite=args.overwrite)
        with open(Path(out) / SOURCE_FILE) as f:
            n = sum(1 for _ in f) - 1
        print(f"wrote {out} ({n} units from {len(args.sessions)} sessions; {SOURCE_FILE} maps "
              "them to your unit ids)")

    return run_command(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
