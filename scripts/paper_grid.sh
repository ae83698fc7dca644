#!/usr/bin/env bash
# The paper's full grid for one agent: dense references, then every sparse method x sparsity x seed, then the analysis.
#   scripts/paper_grid.sh dqn local                                  # joblib on this machine
#   scripts/paper_grid.sh sac slurm hydra.launcher.partition=cpu run_root=/scratch/runs   # SLURM (README "Cluster")
# Extra arguments are overrides for both sweeps (run_root= also tells the analysis where the runs are). A sweep whose
# jobs did not all complete does not stop the script: the analysis reports what exists, and the script exits 1.
# Continue a grid later with the same command (the SLURM launcher's resume=auto leaves completed runs untouched), or
# see it with python -m sparse_rl.grid status +experiment=paper_<agent>_... run_root=...
set -uo pipefail
agent=${1:?usage: scripts/paper_grid.sh dqn|sac|ppo local|slurm [OVERRIDES ...]}; launcher=${2:?launcher: local or slurm}
shift 2
# Acrobot's and MountainCar's returns are negative, so the DQN grid is analysed raw (a ratio to dense needs a positive
# dense score: sparse_rl.analyze refuses it otherwise)
case $agent in
  dqn) experiment=paper_dqn_classic envs=CartPole,Acrobot,MountainCar normalize=raw ;;
  sac) experiment=paper_sac_mujoco envs=HalfCheetah,Hopper,Walker2d,Ant,Humanoid normalize=dense ;;
  ppo) experiment=paper_ppo_mujoco envs=HalfCheetah,Hopper,Walker2d,Ant,Humanoid normalize=dense ;;
  *) echo "unknown agent '$agent'; valid choices: dqn, ppo, sac" >&2; exit 2 ;;
esac
run_root=${RUN_ROOT:-runs}
overrides=()
for arg in "$@"; do
  case $arg in run_root=*) run_root=${arg#run_root=} ;; *) overrides+=("$arg") ;; esac
done
status=0
# a later value of a key wins (Hydra's sweeper): e.g. seed=0 sparsity.sparsity=0.9 shrinks both sweeps for a try-out
python -m sparse_rl.run -m hydra/launcher="$launcher" agent="$agent" env="$envs" sparsity=dense "seed=range(10)" \
  run_root="$run_root" "${overrides[@]}" || status=1
python -m sparse_rl.run -m hydra/launcher="$launcher" +experiment="$experiment" run_root="$run_root" "${overrides[@]}" \
  || status=1
python -m sparse_rl.analyze "$run_root" --normalize "$normalize" || status=1
exit $status
