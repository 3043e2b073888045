"""Run kilomatch on one settings file: ``python _runner_kilomatch.py SETTINGS.json [STATS.json]``.

With STATS.json, the run's summary and its per-step wall time and peak memory are written there.

Executed in a fresh process by :mod:`peers` so that its time and memory are measured alone.
"""

import sys
from pathlib import Path

# Fallback for a plain checkout: the repository root, after any installed kilomatch.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import kilomatch  # noqa: E402
from kilomatch.cli import before_exit, start_of_process  # noqa: E402


def main() -> int:
    # The process is set up and ends as kilomatch's command line does (kilomatch.cli.main).
    start_of_process()
    if len(sys.argv) not in (2, 3):
        print("usage: python _runner_kilomatch.py SETTINGS.json [STATS.json]", file=sys.stderr)
        return 2
    print(f"kilomatch {kilomatch.__version__} from {Path(kilomatch.__file__).parent}")
    result = kilomatch.run(sys.argv[1])
    if len(sys.argv) == 3:
        import json
        Path(sys.argv[2]).write_text(json.dumps({"summary": result.summary,
                                                 "stages": result.stages}, indent=1))
    before_exit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
