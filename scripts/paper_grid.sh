#!/usr/bin/env bash
# The paper's full grid for one agent: dense references, then every sparse method x sparsity x seed.
#   scripts/paper_grid.sh sac local          # or: scripts/paper_grid.sh dqn slurm hydra.launcher.partition=cpu
set -euo pipefail
agent=$1; launcher=$2; shift 2
case $agent in
  dqn) experiment=paper_dqn_classic envs=CartPole,Acrobot,MountainCar ;;
  sac) experiment=paper_sac_mujoco envs=HalfCheetah,Hopper,Walker2d,Ant,Humanoid ;;
  ppo) experiment=paper_ppo_mujoco envs=HalfCheetah,Hopper,Walker2d,Ant,Humanoid ;;
  *) echo "unknown agent '$agent'; valid choices: dqn, ppo, sac" >&2; exit 2 ;;
esac
python -m sparse_rl.run -m hydra/launcher="$launcher" agent="$agent" env="$envs" sparsity=dense "seed=range(10)" "$@"
python -m sparse_rl.run -m hydra/launcher="$launcher" +experiment="$experiment" "$@"
python -m sparse_rl.analyze "${RUN_ROOT:-runs}" --normalize dense
