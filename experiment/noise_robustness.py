"""``python -m sparse_rl.evaluate RUNS_DIR [KEY=VALUE ...]``: returns under Gaussian observation noise.

Evaluates the final ``model.zip`` of every run directory under RUNS_DIR at each noise level sigma (Graesser et al. 2022,
Fig 6) and writes ``table.csv`` / ``table.md`` (mean return over seeds with a 95% bootstrap CI per agent, env,
method, sparsity and sigma), ``returns.csv`` (every episode's return) and ``robustness.png`` / ``.pdf``.

- pixels: sigma in pixel units, added to each raw frame (below the frame stack), rounded, clipped to [0, 255];
- vector observations: sigma in units of each dimension's standard deviation, measured on the run's own
  noise-free (sigma=0) evaluation episodes, added before any VecNormalize.

Each kind has its own default sigma grid (``configs/robustness.yaml``: vector observations lose their return between
sigma 0.1 and 2 stds, pixels over tens of pixel units); ``noise=...`` sets one grid for both.

Models are rebuilt from each run's ``.hydra/config.yaml``; only ``policy.pth`` is read from ``model.zip``
(``torch.load(weights_only=True)``, nothing unpickled). Nothing is written inside a run directory: the output goes
to RUNS_DIR_robustness beside RUNS_DIR; when RUNS_DIR is one run directory ``<root>/<agent>/<env>/<label>/seed_N``,
to ``<root>_robustness/<agent>/<env>/<label>/seed_N`` (not among the seed folders). Envs are seeded as the
run's evaluation env was (run seed + 10000) and the noise from (seed, run seed): the output is deterministic, and
sigma=0 is the plain evaluation.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from tqdm import tqdm

from agents.saved import load_policy
from analysis.aggregate import CI_LEVEL
from analysis.loading import load_runs
from analysis.records import RunRecord
from analysis.robustness import RETURN_COLUMNS, SIGMA_UNITS, plot_robustness, robustness_table
from analysis.tables import markdown_table
from envs import EVAL_SEED_OFFSET, make_vec_env
from envs.noise import NOISE_KINDS, ObservationNoise, noise_kind
from experiment.cli import CONFIGS_DIR
from experiment.layout import HYDRA_CONFIG, MODEL_FILE, atomic_write, atomic_write_text
from experiment.numerics import apply_torch_settings
from experiment.plan import Plan, UsageError, plan_run
from experiment.sb3 import build_plan_model
from experiment.sb3_state import VEC_NORMALIZE_FILE, load_vec_normalize, vec_normalize_file
from experiment.schema import RunSchema

DEFAULTS_FILE = CONFIGS_DIR / "robustness.yaml"
# key, how to write its value, what it does (its default comes from configs/robustness.yaml)
KEY_HELP = (
    ("noise", "S1,S2,...", "sigmas (numbers >= 0) for every observation kind; 0 is always evaluated"),
    ("noise.vector", "S1,S2,...", "sigmas for vector observations, in each dimension's std"),
    ("noise.pixels", "S1,S2,...", "sigmas for pixel observations, in pixel units"),
    ("episodes", "N", "episodes per run and sigma (null: each run's agent.eval_episodes)"),
    ("seed", "S", "seeds the noise, with each run's seed"),
    (
        "out",
        "DIR",
        "output folder (null: RUNS_DIR_robustness beside RUNS_DIR; for one run directory beside its runs "
        "root, see above); never inside a run directory",
    ),
    ("deterministic", "BOOL", "greedy actions, as the training path's evaluations"),
    ("device", "cpu|cuda", "where the models run"),
    ("reps", "N", "bootstrap replications of the CIs"),
    ("plots", "BOOL", "write robustness.png/.pdf"),
)
KEYS = tuple(key for key, _, _ in KEY_HELP)
OUT_SUFFIX = "_robustness"  # default output: a sibling of RUNS_DIR, never inside a run directory
EVAL_BUFFER_SIZE = 1  # an evaluated off-policy model needs no replay buffer
EXIT_USAGE = 2
EXAMPLE = "python -m sparse_rl.evaluate runs/dqn noise=0,5,10,20 episodes=5 seed=1"


def load_defaults() -> dict[str, Any]:
    """The keys' defaults: ``configs/robustness.yaml``."""
    return dict(OmegaConf.to_container(OmegaConf.load(DEFAULTS_FILE)))


def _format_default(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{kind} {_format_default(grid)}" for kind, grid in value.items())
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def usage() -> str:
    """The ``--help`` text: the module doc, every key with its default from ``configs/robustness.yaml``, an example."""
    defaults = load_defaults()
    lines = ["usage: python -m sparse_rl.evaluate RUNS_DIR [KEY=VALUE ...]", ""]
    lines += [__doc__.split("\n\n", 1)[1].replace("``", "").rstrip(), "", "Keys (defaults: configs/robustness.yaml):"]
    for key, value, text in KEY_HELP:
        default = OmegaConf.select(OmegaConf.create(defaults), key)
        default = OmegaConf.to_container(default) if OmegaConf.is_config(default) else default
        lines.append(f"  {f'{key}={value}':<24}{text} (default {_format_default(default)})")
    return "\n".join([*lines, "", f"example: {EXAMPLE}"])


TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class Settings:
    """A validated command line."""

    root: Path
    noise: dict[str, tuple[float, ...]]  # sigmas per observation kind (envs.noise.NOISE_KINDS)
    episodes: int | None
    seed: int
    out: Path
    deterministic: bool
    device: str
    reps: int
    plots: bool


def _as_bool(key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise UsageError(f"{key}={value!r} is not a boolean; valid choices: true, false")


def _as_int(key: str, value: Any, minimum: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise UsageError(f"{key}={value!r} is not an integer") from None
    if number < minimum:
        raise UsageError(f"{key} must be >= {minimum}, got {number}")
    return number


def parse_noise(value: Any) -> tuple[float, ...]:
    """``0,1,2.5`` (or a list) as sorted unique sigmas, 0 always included; UsageError for anything else."""
    items = value if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else str(value).split(",")
    sigmas = set()
    for item in items:
        try:
            sigma = float(str(item).strip())
        except ValueError:
            raise UsageError(f"noise: {item!r} is not a number; give sigmas >= 0, e.g. noise=0,5,10") from None
        if not math.isfinite(sigma) or sigma < 0:
            raise UsageError(f"noise: sigma {item!r} must be a finite number >= 0, e.g. noise=0,5,10")
        sigmas.add(sigma)
    return tuple(sorted(sigmas | {0.0}))


def parse_args(argv: Sequence[str]) -> Settings:
    """RUNS_DIR and KEY=VALUE pairs over ``configs/robustness.yaml``; UsageError names the problem."""
    defaults = load_defaults()
    positional = [a for a in argv if "=" not in a]
    if len(positional) != 1:
        raise UsageError(f"expected one RUNS_DIR and KEY=VALUE pairs, got {' '.join(argv) or 'nothing'} (see --help)")
    values: dict[str, Any] = dict(defaults)
    for arg in argv:
        if "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if key not in KEYS:
            raise UsageError(f"unknown key '{key}'; valid keys: {', '.join(KEYS)}")
        values[key] = value
    root = Path(positional[0])
    if not root.is_dir():
        raise UsageError(f"RUNS_DIR {root} is not a directory")
    grids = {kind: parse_noise(defaults["noise"][kind]) for kind in NOISE_KINDS}
    if "noise" in argv_keys(argv):
        grids = dict.fromkeys(NOISE_KINDS, parse_noise(values["noise"]))
    for kind in NOISE_KINDS:
        if f"noise.{kind}" in argv_keys(argv):
            grids[kind] = parse_noise(values[f"noise.{kind}"])
    episodes = values["episodes"]
    if episodes is not None and str(episodes).lower() not in ("null", "none"):
        episodes = _as_int("episodes", episodes, 1)
    else:
        episodes = None
    device = str(values["device"])
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"device={device!r}; valid choices: cpu, cuda, cuda:N")
    if device != "cpu" and not torch.cuda.is_available():
        raise UsageError(f"device={device} but torch sees no CUDA device; valid choices here: cpu")
    out = Path(values["out"]) if values["out"] not in (None, "", "null") else default_out(root)
    return Settings(
        root,
        grids,
        episodes,
        _as_int("seed", values["seed"], 0),
        out,
        _as_bool("deterministic", values["deterministic"]),
        device,
        _as_int("reps", values["reps"], 1),
        _as_bool("plots", values["plots"]),
    )


def argv_keys(argv: Sequence[str]) -> set[str]:
    """The keys given as KEY=VALUE on the command line."""
    return {arg.split("=", 1)[0] for arg in argv if "=" in arg}


def default_out(root: Path) -> Path:
    """RUNS_DIR_robustness beside RUNS_DIR; for one run directory laid out as ``<root>/<agent>/<env>/<label>/seed_N``
    (configs/config.yaml's run_dir), ``<root>_robustness/<agent>/<env>/<label>/seed_N``: beside the runs, not among
    the seed folders. A run directory elsewhere gets its own sibling ``<name>_robustness``."""
    root = root.resolve()
    sibling = root.parent / f"{root.name}{OUT_SUFFIX}"
    if not (root / HYDRA_CONFIG).is_file():
        return sibling
    try:
        saved = OmegaConf.load(root / HYDRA_CONFIG)
        tail = Path(str(saved.agent.name), str(saved.env.name))
    except Exception:  # an unreadable config: the run is reported as such later; the sibling is still outside it
        return sibling
    depth = len(tail.parts) + 2  # agent, env (dmc/... has two parts), label, seed_N
    if len(root.parts) <= depth or Path(*root.parts[-depth:-2]) != tail:
        return sibling
    runs_root = Path(*root.parts[:-depth])
    return runs_root.parent / f"{runs_root.name}{OUT_SUFFIX}" / Path(*root.parts[-depth:])


def check_out(out: Path, run_dirs: Sequence[Path]) -> None:
    """Refuse an output folder inside (or equal to) a run directory."""
    target = out.resolve()
    for run_dir in run_dirs:
        if target.is_relative_to(run_dir.resolve()):
            raise UsageError(f"out={out} lies inside the run directory {run_dir}; choose a folder outside every run")


# ---- one run


@dataclass
class SavedRun:
    """A run rebuilt from its config with its saved policy loaded, ready to evaluate."""

    record: RunRecord
    plan: Plan
    model: Any
    normalization: Path | None  # its VecNormalize statistics (experiment.sb3_state.vec_normalize_file)
    episodes: int
    kind: str  # pixels or vector (envs.noise.noise_kind)

    @property
    def eval_seed(self) -> int:
        """The seed of the run's evaluation env in training (:data:`envs.EVAL_SEED_OFFSET`)."""
        return int(self.plan.cfg.seed) + EVAL_SEED_OFFSET


def on_current_schema(saved: Any) -> Any:
    """A run's saved config on the current schema: keys added after the run was trained take the configured
    defaults of its agent, env and method (new options default to off: no ``sparsity.structure``, no mask decay),
    and diagnostics are off (they draw no randomness, but an old run had none)."""
    from hydra import compose, initialize_config_dir

    layers = [OmegaConf.structured(RunSchema)]
    choices = [f"agent={saved.agent.name}", f"env={saved.env.name}", f"sparsity={saved.sparsity.method}"]
    try:
        with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
            layers.append(compose(config_name="config", overrides=choices))
    except Exception:  # e.g. an env config removed since: the saved values alone must do
        pass
    if "diagnostics" not in saved:
        configured = OmegaConf.load(CONFIGS_DIR / "config.yaml").diagnostics
        layers.append({"diagnostics": OmegaConf.merge(configured, {"freq": 0})})
    return OmegaConf.merge(*layers, saved)


def load_saved_run(record: RunRecord, device: str, episodes: int | None) -> SavedRun:
    """Rebuild ``record``'s model from ``.hydra/config.yaml`` and load its ``model.zip`` policy (read only)."""
    cfg = on_current_schema(OmegaConf.load(record.path / HYDRA_CONFIG))
    plan = plan_run(cfg, check_run_dir=False)
    normalization = vec_normalize_file(record.path)
    if cfg.agent.normalize and normalization is None:
        raise UsageError(
            f"agent.normalize=true but neither checkpoint/{VEC_NORMALIZE_FILE} nor {VEC_NORMALIZE_FILE} holds the "
            "observation statistics"
        )
    apply_torch_settings(cfg)
    env = make_vec_env(plan.env, 1, int(cfg.seed) + EVAL_SEED_OFFSET)
    kind = noise_kind(env.observation_space)  # refuses unsupported observations before any evaluation
    overrides = {"buffer_size": EVAL_BUFFER_SIZE} if "buffer_size" in inspect.signature(plan.agent.algo).parameters else {}
    model, _ = build_plan_model(plan, env, device=device, **overrides)
    env.close()
    load_policy(model, record.path / MODEL_FILE)
    episodes = int(cfg.agent.eval_episodes) if episodes is None else episodes
    return SavedRun(record, plan, model, normalization, episodes, kind)


def evaluation_env(run: SavedRun, noise: dict[str, Any] | None = None) -> VecEnv:
    """The run's evaluation env (its seed, VecNormalize statistics), each single env in ``ObservationNoise(**noise)``."""
    cfg = run.plan.cfg
    kwargs = {"wrapper_class": ObservationNoise, "wrapper_kwargs": noise} if noise is not None else {}
    env = make_vec_env(run.plan.env, 1, run.eval_seed, **kwargs)
    if cfg.agent.normalize:
        env = VecNormalize(env, training=False, norm_reward=False)
        load_vec_normalize(run.normalization, env)
    return env


def episode_returns(run: SavedRun, env: VecEnv, deterministic: bool, rng_seed: int) -> np.ndarray:
    """``run.episodes`` episode returns of ``run.model`` on ``env`` (SB3's ``evaluate_policy``), RNGs seeded first."""
    run.model.set_random_seed(rng_seed)  # stochastic policies (deterministic=false) draw from these
    returns, _ = evaluate_policy(
        run.model, env, n_eval_episodes=run.episodes, deterministic=deterministic, return_episode_rewards=True
    )
    return np.asarray(returns, dtype=float)


def noise_seed(seed: int, run_seed: int) -> list[int]:
    """The noise generator's seed: the command's ``seed`` and the run's seed (same noise at every sigma)."""
    return [seed, run_seed]


def evaluate_run(run: SavedRun, settings: Settings, progress: tqdm | None = None) -> dict[float, np.ndarray]:
    """Returns per sigma; sigma 0 first, its clean observations give the vector std."""
    std = None
    results = {}
    for sigma in settings.noise[run.kind]:
        seed = noise_seed(settings.seed, int(run.record.seed))
        record = sigma == 0 and run.kind == "vector"
        env = evaluation_env(run, {"sigma": sigma, "seed": seed, "std": std, "record": record})
        results[sigma] = episode_returns(run, env, settings.deterministic, settings.seed)
        if record:
            std = np.stack(env.get_attr("recorded")[0]).std(axis=0)
        env.close()
        if progress is not None:
            progress.update(1)
    return results


# ---- the command


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def table_markdown(table: pd.DataFrame, settings: Settings, skipped: list[str]) -> str:
    """``table.md``: the settings, the table and the runs left out."""
    lines = [
        f"# Robustness to observation noise: `{settings.root}`",
        "",
        f"- {SIGMA_UNITS}.",
        "- Per run: mean return over "
        + (f"{settings.episodes}" if settings.episodes else "its `agent.eval_episodes`")
        + f" episodes ({'greedy' if settings.deterministic else 'stochastic'} actions); "
        f"mean over seeds with a {CI_LEVEL:.0%} bootstrap CI ({settings.reps} replications).",
        f"- Noise seed {settings.seed}; envs seeded as each run's evaluation env.",
        "",
        markdown_table(table),
        "",
        "## Runs left out",
        "",
    ]
    lines += [f"- {line}" for line in skipped] or ["None."]
    return "\n".join(lines) + "\n"


def run(settings: Settings) -> tuple[pd.DataFrame, list[str], list[Path]]:
    """Evaluate every saved run; returns the table, the runs left out (with reasons) and the files written."""
    records = load_runs(settings.root, skip=(settings.out,), progress=False)
    if not records:
        raise UsageError(f"no run directory (a folder with {HYDRA_CONFIG}) under {settings.root}")
    check_out(settings.out, [r.path for r in records])
    skipped, usable, seen = [], [], {}
    for record in records:
        identity = (record.agent, record.env, record.method, record.sparsity, record.seed)
        if not (record.path / MODEL_FILE).is_file():
            skipped.append(f"{record.path}: no {MODEL_FILE} (not completed)")
        elif not record.identified:
            skipped.append(f"{record.path}: {record.reasons(('broken',))}")
        elif identity in seen:
            skipped.append(f"{record.path}: duplicate of {seen[identity]} (same agent, env, method, sparsity, seed)")
        else:
            seen[identity] = record.path
            usable.append(record)
    if not usable:
        raise UsageError(f"no run under {settings.root} has a {MODEL_FILE} to evaluate ({len(records)} run directories)")
    rows = []
    longest = max(len(grid) for grid in settings.noise.values())
    bar = tqdm(total=len(usable) * longest, desc="runs x sigmas", unit="eval", file=sys.stderr)
    with bar:
        for record in usable:
            done = bar.n + longest
            try:
                saved = load_saved_run(record, settings.device, settings.episodes)
                bar.total -= longest - len(settings.noise[saved.kind])  # this run's grid
                done = bar.n + len(settings.noise[saved.kind])
                results = evaluate_run(saved, settings, bar)
            except Exception as error:  # this run only (bad config, missing ROM, unfit weights): say why, go on
                skipped.append(f"{record.path}: {type(error).__name__}: {' '.join(str(error).split())}")
                bar.update(done - bar.n)
                continue
            path = record.path.relative_to(settings.root) if record.path.is_relative_to(settings.root) else record.path
            for sigma, returns in results.items():
                for episode, value in enumerate(returns):
                    rows.append([str(path), record.agent, record.env, record.method, record.sparsity, record.seed,
                                 sigma, episode, value])  # fmt: skip
    returns = pd.DataFrame(rows, columns=RETURN_COLUMNS)
    if returns.empty:
        raise UsageError(f"no run under {settings.root} could be evaluated: {'; '.join(skipped)}")
    table = robustness_table(returns, settings.reps, settings.seed)
    files = [
        _write_csv(returns, settings.out / "returns.csv"),
        _write_csv(table, settings.out / "table.csv"),
        atomic_write_text(settings.out / "table.md", table_markdown(table, settings, skipped)),
    ]
    if settings.plots:
        files += plot_robustness(table, settings.out)
    return table, skipped, files


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, evaluate, print the table; bad input is one line on stderr. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    try:
        settings = parse_args(argv)
        table, skipped, files = run(settings)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(markdown_table(table))
    for line in skipped:
        print(f"left out: {line}", file=sys.stderr)
    print(f"\nwrote {len(files)} files to {settings.out}")
    return 0
