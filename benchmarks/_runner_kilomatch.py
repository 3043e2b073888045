"""Run kilomatch on one settings file: ``python _runner_kilomatch.py SETTINGS.json``.

Executed in a fresh process by :mod:`peers` so that its time and memory are measured alone.
"""

import sys
from pathlib import Path

# Fallback for a plain checkout: the repository root, after any installed kilomatch.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import kilomatch  # noqa: E402


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python _runner_kilomatch.py SETTINGS.json", file=sys.stderr)
        return 2
    print(f"kilomatch {kilomatch.__version__} from {Path(kilomatch.__file__).parent}")
    kilomatch.run(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
