"""Run a peer tool on one settings file, with the peers' Python (never kilomatch's)::

    python _runner_peer.py pykilomatch SETTINGS.json
    python _runner_peer.py pydant SETTINGS.json

pyKilomatch runs its four documented steps (preprocess, motionEstimation, finalClustering,
autoCuration); pyDANT runs ``pyDANT.Runner.runDANT``, which does the same four steps. Both tools
draw random numbers from numpy's global generator without seeding it (random start of the motion
fit); it is seeded here so that reruns give the same result.
"""

import json
import sys

import numpy as np


def run_pykilomatch(settings: dict) -> None:
    import pyKilomatch

    print(f"pyKilomatch from {pyKilomatch.__file__}")
    pyKilomatch.preprocess(settings)
    pyKilomatch.motionEstimation(settings)
    pyKilomatch.finalClustering(settings)
    pyKilomatch.autoCuration(settings)


def run_pydant(settings: dict) -> None:
    import pyDANT
    from pyDANT.Runner import runDANT

    print(f"pyDANT from {pyDANT.__file__}")
    runDANT(settings)


RUNNERS = {"pykilomatch": run_pykilomatch, "pydant": run_pydant}


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in RUNNERS:
        print("usage: python _runner_peer.py {pykilomatch|pydant} SETTINGS.json", file=sys.stderr)
        return 2
    with open(sys.argv[2], encoding="utf-8") as f:
        settings = json.load(f)
    np.random.seed(0)
    RUNNERS[sys.argv[1]](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
