"""``python -m sparse_rl.evaluate RUNS_DIR [KEY=VALUE ...]``: returns under Gaussian observation noise
(Graesser et al. 2022, Fig. 6).

Thin: :mod:`experiment.noise_robustness` does the work; ``--help`` lists the keys.
"""

import sys

from experiment.noise_robustness import main

if __name__ == "__main__":
    sys.exit(main())
