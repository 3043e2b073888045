"""Show one tracked neuron of the bundled example across its sessions.

Run the example first (``python mainKilomatch.py``), then::

    python examples/plot_cluster.py [CLUSTER_ID]

It writes examples/example_output/Figures/Cluster{ID}.png. In a notebook, the figure returned
by ``kilomatch.plot_cluster`` displays as it is.
"""

import sys
from pathlib import Path

import numpy as np

import kilomatch

output = Path(__file__).parent / "example_output"
idx = np.load(output / "IdxCluster.npy").ravel()
if len(sys.argv) > 1:
    cluster = int(sys.argv[1])
else:  # the cluster seen in the most sessions
    ids, counts = np.unique(idx[idx > 0], return_counts=True)
    cluster = int(ids[np.argmax(counts)])
fig = kilomatch.plot_cluster(output, cluster)
path = output / "Figures" / f"Cluster{cluster}.png"
fig.savefig(path, dpi=120)
print(f"wrote {path}")
