"""``python -m sparse_rl.grid status|resubmit OVERRIDES``: a grid's state from its run directories, and a
resubmission of what is missing (thin: hands over to :func:`experiment.grid.main`; README "Cluster").

    python -m sparse_rl.grid status +experiment=paper_dqn_classic run_root=/scratch/runs
    python -m sparse_rl.grid resubmit hydra/launcher=slurm hydra.launcher.partition=cpu +experiment=paper_dqn_classic
"""

from __future__ import annotations

import sys

from experiment.grid import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
