#!/usr/bin/env bash
# Seeds 0..N-1 of one configuration, in parallel on this machine, then the analysis.
#   scripts/seed_sweep.sh 5 agent=sac env=HalfCheetah sparsity=rigl sparsity.sparsity=0.9
set -euo pipefail
n_seeds=$1; shift
python -m sparse_rl.run -m hydra/launcher=local "hydra.launcher.n_jobs=${N_JOBS:-$(nproc)}" \
  "seed=range(${n_seeds})" "run_root=${RUN_ROOT:-runs}" "$@"
python -m sparse_rl.analyze "${RUN_ROOT:-runs}"
