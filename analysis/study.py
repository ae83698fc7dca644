"""A named study: its definition, the committed table of compact run records, and the report made from that table.

A study (``configs/study/<name>.yaml``) is a grid of agent × envs × methods × sparsities × seeds. Each completed run
becomes one compact record (identity, config hash, code version, per-evaluation returns, score, parameter counts) in
a JSON-lines table committed with the report, so the report is regenerated from the table alone and a study can
accumulate across machines and sessions (docs/design.md decision 39). The paper's values come from
``configs/paper/graesser2022.yaml``; the orderings the paper states are checked with rliable's probability of
improvement (Agarwal et al. 2021) and labelled held / not held / inconclusive from its 95% CI.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from analysis import aggregate as agg
from analysis import plots
from analysis.curves import curve_frame
from analysis.frame import scores_frame
from analysis.loading import load_runs
from analysis.normalize import REFERENCE_METHOD, normalize
from analysis.records import RunRecord, run_label
from analysis.savefig import atomic_savefig
from analysis.tables import aggregate_table, markdown_table, per_env_table
from experiment.layout import DENSE_METHOD, DENSE_SPARSITY, HYDRA_CONFIG, SUMMARY_FILE, atomic_write_text

RELATIONS = (">", ">=", "~")
VERDICTS = ("held", "not held", "inconclusive", "no data")
CONFIG_HASH_KEYS = ("agent", "env", "sparsity")  # what defines a run's experiment, besides its seed
FIGURE_FORMATS = ("png",)  # committed figures: PNG only (the PDFs of `analyze` would bloat the repository)


class StudyError(ValueError):
    """A study definition or table that cannot be used (one line, names the file)."""


@dataclass(frozen=True)
class Ordering:
    """A claim of the paper, ``a <relation> b`` at equal sparsity (``~``: similar, ``>=``: not worse)."""

    a: str
    b: str
    relation: str
    source: str

    def text(self) -> str:
        """The claim as a reader writes it, e.g. ``prune ≥ rigl``."""
        return f"{self.a} {dict(zip(RELATIONS, ('>', '≥', '≈')))[self.relation]} {self.b}"

    def accepted(self, margin: float) -> tuple[float, float, bool]:
        """The values of P(a > b) the claim accepts: (low, high, low end open)."""
        return {">": (0.5, 1.0, True), ">=": (0.5 - margin, 1.0, False), "~": (0.5 - margin, 0.5 + margin, False)}[
            self.relation
        ]


@dataclass(frozen=True)
class StudyDefinition:
    """One study's grid and report settings, as read from ``configs/study/<name>.yaml``."""

    name: str
    title: str
    agent: str
    envs: tuple[str, ...]
    methods: tuple[str, ...]
    sparsities: tuple[float, ...]
    seeds: int
    overrides: tuple[str, ...]
    run_root: str
    table: str
    report: str
    figures: str
    paper: str
    low_return: Mapping[str, float]
    equivalence_margin: float
    steps_per_second: float
    deviations: tuple[str, ...] = ()

    def cells(self) -> list[tuple[str, str, float]]:
        """Every (env, method, sparsity) of the grid; a dense network has sparsity 0 (one cell per env)."""
        cells: list[tuple[str, str, float]] = []
        for env in self.envs:
            for method in self.methods:
                levels = (DENSE_SPARSITY,) if method == DENSE_METHOD else self.sparsities
                cells += [(env, method, float(s)) for s in levels]
        return cells

    def run_keys(self, seeds: int | None = None) -> list[RunKey]:
        """Every run of the grid for seeds ``0..seeds-1`` (the definition's count by default)."""
        n = self.seeds if seeds is None else seeds
        return [RunKey(self.agent, env, m, s, seed) for env, m, s in self.cells() for seed in range(n)]


@dataclass(frozen=True, order=True)
class RunKey:
    """The identity of one run in a study."""

    agent: str
    env: str
    method: str
    sparsity: float
    seed: int


def study_from_mapping(name: str, data: Mapping[str, Any], source: str) -> StudyDefinition:
    """A :class:`StudyDefinition` from the YAML mapping of ``source``; a missing or bad key is one-line error."""
    fields = {f: data.get(f) for f in StudyDefinition.__dataclass_fields__ if f != "name"}
    missing = [k for k, v in fields.items() if v is None and k != "deviations"]
    if missing:
        raise StudyError(f"{source}: missing key(s) {', '.join(missing)}")
    try:
        return StudyDefinition(
            name=name,
            title=str(fields["title"]),
            agent=str(fields["agent"]),
            envs=tuple(str(e) for e in fields["envs"]),
            methods=tuple(str(m) for m in fields["methods"]),
            sparsities=tuple(float(s) for s in fields["sparsities"]),
            seeds=int(fields["seeds"]),
            overrides=tuple(str(o) for o in fields["overrides"]),
            run_root=str(fields["run_root"]),
            table=str(fields["table"]),
            report=str(fields["report"]),
            figures=str(fields["figures"]),
            paper=str(fields["paper"]),
            low_return={str(k): float(v) for k, v in dict(fields["low_return"]).items()},
            equivalence_margin=float(fields["equivalence_margin"]),
            steps_per_second=float(fields["steps_per_second"]),
            deviations=tuple(str(d) for d in fields["deviations"] or ()),
        )
    except (TypeError, ValueError) as exc:
        raise StudyError(f"{source}: {exc}") from None


def orderings_of(paper: Mapping[str, Any]) -> list[Ordering]:
    """The orderings the paper states (``paper['orderings']``), checked for valid relations."""
    out = []
    for item in paper.get("orderings", []):
        if item["relation"] not in RELATIONS:
            raise StudyError(f"ordering {item}: relation must be one of {', '.join(RELATIONS)}")
        out.append(Ordering(str(item["a"]), str(item["b"]), str(item["relation"]), str(item["source"])))
    return out


# ----------------------------------------------------------------------------- the table of compact records
def config_hash(run_dir: str | os.PathLike[str]) -> str | None:
    """12 hex digits of the sha256 of a run's agent, env and sparsity config (seed and paths excluded)."""
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / HYDRA_CONFIG), resolve=False)
    except Exception:  # an unreadable config has no hash; the record says so
        return None
    part = {k: cfg.get(k) for k in CONFIG_HASH_KEYS} if isinstance(cfg, dict) else {}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _summary(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_of(run: RunRecord, root: str | os.PathLike[str]) -> dict[str, Any]:
    """The compact, JSON-ready record of one completed, scored run (``run.usable_for_scores``)."""
    summary = _summary(run.path)
    versions = summary.get("versions", {}) if isinstance(summary.get("versions"), dict) else {}
    params = summary.get("params", {}) if isinstance(summary.get("params"), dict) else {}
    code = versions.get("sparse_rl", "unknown")
    if summary.get("code_commit"):
        code = f"{code}+{summary['code_commit']}"
    return {
        "agent": run.agent,
        "env": run.env,
        "method": run.method,
        "sparsity": run.sparsity,
        "seed": run.seed,
        "config_hash": config_hash(run.path),
        "code_version": code,
        # summaries written before the SB3 path named its engine are SB3's (the population engine always named it)
        "engine": str(summary.get("engine", "sb3")),
        "timesteps": [int(t) for t in run.timesteps],
        "returns": [float(r) for r in run.returns],
        "score": float(run.score) if run.score is not None else None,
        "active_params": run.active_params,
        "total_params": params.get("total_with_bias"),
        "env_steps_per_s": summary.get("env_steps_per_s"),
        "run_dir": os.path.relpath(run.path, root),
    }


def key_of(record: Mapping[str, Any]) -> RunKey:
    """The :class:`RunKey` of a record."""
    return RunKey(
        str(record["agent"]), str(record["env"]), str(record["method"]), float(record["sparsity"]), int(record["seed"])
    )


def read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a study table (JSON lines); an absent table is empty, a corrupt line a one-line error."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
                key_of(records[-1])
            except (ValueError, KeyError, TypeError) as exc:
                raise StudyError(f"{path}:{number}: not a study record ({exc})") from None
    return records


def write_table(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records sorted by run key, one JSON object per line (diff-friendly), atomically."""
    ordered = sorted(records, key=key_of)
    return atomic_write_text(Path(path), "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))


@dataclass
class Harvest:
    """What scanning a run root found for a study."""

    added: list[dict[str, Any]] = field(default_factory=list)
    unfinished: dict[RunKey, Path] = field(default_factory=dict)  # in the grid, a directory, not completed
    outside: int = 0  # completed runs under the root that are not in the study's grid


def harvest(
    study: StudyDefinition, root: str | os.PathLike[str], recorded: Iterable[RunKey], seeds: int | None = None
) -> Harvest:
    """Records of the completed runs of ``study`` under ``root`` that ``recorded`` lacks, and the unfinished ones."""
    found = Harvest()
    if not Path(root).is_dir():
        return found
    wanted, done = set(study.run_keys(seeds)), set(recorded)
    for run in load_runs(root, progress=False):
        if not run.identified:
            continue
        key = RunKey(str(run.agent), str(run.env), str(run.method), float(run.sparsity), int(run.seed))
        if key not in wanted:
            found.outside += run.usable_for_scores
        elif run.usable_for_scores and key not in done:
            found.added.append(record_of(run, root))
            done.add(key)
        elif not run.usable_for_scores and key not in done:
            found.unfinished[key] = run.path
    return found


def records_to_runs(records: Sequence[Mapping[str, Any]]) -> list[RunRecord]:
    """Table records as the analysis' :class:`RunRecord` s (completed and scored)."""
    return [
        RunRecord(
            path=Path(r["run_dir"]),
            agent=r["agent"],
            env=r["env"],
            method=r["method"],
            sparsity=float(r["sparsity"]),
            seed=int(r["seed"]),
            status="completed",
            timesteps=np.asarray(r["timesteps"], dtype=np.int64),
            returns=np.asarray(r["returns"], dtype=float),
            score=r["score"],
            active_params=r.get("active_params"),
        )
        for r in records
    ]


# ----------------------------------------------------------------------------- the report
def verdict(ordering: Ordering, estimate: agg.Estimate, margin: float) -> str:
    """``held`` if the CI of P(a > b) lies inside what the claim accepts, ``not held`` if outside, else
    ``inconclusive``; ``no data`` without an estimate (a missing cell or a single run)."""
    low, high = estimate.low, estimate.high
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no data"
    lo, hi, open_low = ordering.accepted(margin)
    inside = (low > lo if open_low else low >= lo) and high <= hi
    outside = (high <= lo if open_low else high < lo) or low > hi
    return "held" if inside else "not held" if outside else "inconclusive"


def normalized_scores(scores: pd.DataFrame, low_return: Mapping[str, float]) -> pd.DataFrame:
    """``score`` = (raw − low) / (dense mean − low) per env; envs without a dense run are dropped."""
    with_dense = set(scores.loc[(scores["method"] == REFERENCE_METHOD), "env"])
    frame = scores[scores["env"].isin(with_dense)].copy()
    if frame.empty:
        return frame
    shifted = frame.assign(raw_score=frame["raw_score"] - frame["env"].map(lambda e: low_return.get(e, 0.0)))
    out = normalize(shifted, "dense")
    out["raw_score"] = frame["raw_score"]
    return out


def ordering_table(
    scores: pd.DataFrame, study: StudyDefinition, orderings: Sequence[Ordering], reps: int, seed: int
) -> pd.DataFrame:
    """Each stated ordering at each sparsity: P(a > b) over common envs with its CI, seeds and the verdict."""
    rows = []
    for sparsity in study.sparsities:
        for o in orderings:
            la, lb = (run_label(m, DENSE_SPARSITY if m == DENSE_METHOD else sparsity) for m in (o.a, o.b))
            envs = sorted(set(scores.loc[scores["label"] == la, "env"]) & set(scores.loc[scores["label"] == lb, "env"]))
            x, y = agg.score_matrix(scores, la, envs), agg.score_matrix(scores, lb, envs)
            usable = x.n_seeds >= 2 and y.n_seeds >= 2  # one run per side gives no interval
            est = agg.probability_of_improvement(x, y, reps, seed) if envs and usable else agg.NAN_ESTIMATE
            rows.append(
                {
                    "sparsity": sparsity,
                    "claim": o.text(),
                    "p_improvement": est.value,
                    "ci_low": est.low,
                    "ci_high": est.high,
                    "n_envs": len(envs),
                    "seeds": f"{x.n_seeds} vs {y.n_seeds}",
                    "verdict": verdict(o, est, study.equivalence_margin),
                    "source": o.source,
                }
            )
    return pd.DataFrame(rows)


def ordering_figure(table: pd.DataFrame, margin: float, title: str) -> Figure:
    """P(a > b) with its CI per claim, the tie band shaded, the verdict as text."""
    fig = Figure(figsize=(7.5, 1.2 + 0.45 * len(table)), layout="constrained")
    ax = fig.subplots()
    ax.axvspan(0.5 - margin, 0.5 + margin, color="0.9", label=f"tie band (0.5 ± {margin:g})")
    ax.axvline(0.5, color="0.5", linewidth=0.8)
    y = np.arange(len(table))[::-1]
    colors = {"held": "C2", "not held": "C3", "inconclusive": "C7", "no data": "C7"}
    for yi, row in zip(y, table.itertuples(index=False)):
        color = colors[row.verdict]
        if math.isfinite(row.ci_low):
            ax.hlines(yi, row.ci_low, row.ci_high, color=color, linewidth=6, alpha=0.6)
            ax.plot(row.p_improvement, yi, "o", color="black", markersize=4)
        ax.text(1.02, yi, row.verdict, va="center", fontsize="small", color=color, transform=ax.get_yaxis_transform())
    ax.set_yticks(y, [f"{c}  (s={s:g})" for c, s in zip(table["claim"], table["sparsity"])])
    ax.set(xlim=(0, 1), xlabel="P(a > b), 95% stratified bootstrap CI", title=title)
    ax.legend(fontsize="small", loc="lower left")
    return fig


def _cell(value: float, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}g}"


def _ci(mean: float, low: float, high: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "—"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.4g} (one seed)"
    return f"{mean:.4g} [{low:.4g}, {high:.4g}]"


def _paper_dense(paper: Mapping[str, Any], agent: str, env: str) -> str:
    item = paper.get("dense_returns", {}).get(agent, {}).get(env)
    if not item:
        return "—"
    text = f"{'≈' if item.get('approx') else ''}{item['value']:g}"
    return f"{text} ({item['note']})" if item.get("note") else text


def engines_by_cell(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, float], str]:
    """What trained each (env, method, sparsity) cell's runs: ``sb3``, ``population`` or both, comma-separated."""
    found: dict[tuple[str, str, float], set[str]] = {}
    for r in records:
        found.setdefault((str(r["env"]), str(r["method"]), float(r["sparsity"])), set()).add(str(r.get("engine", "?")))
    return {cell: ", ".join(sorted(engines)) for cell, engines in found.items()}


def per_env_markdown(
    per_env: pd.DataFrame, study: StudyDefinition, paper: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> list[str]:
    """One table per env: each method's score (mean, 95% CI, seeds), active parameters, the engine that trained its
    runs and the paper's value."""
    engines = engines_by_cell(records)
    lines = []
    for env in study.envs:
        cell = per_env[per_env["env"] == env]
        lines += [f"### {env}", ""]
        if cell.empty:
            lines += ["No completed run yet.", ""]
            continue
        rows = pd.DataFrame(
            {
                "method": cell["method"],
                "sparsity": cell["sparsity"],
                "seeds": cell["n_seeds"],
                "score (mean, 95% CI)": [_ci(m, lo, hi) for m, lo, hi in zip(cell["mean"], cell["ci_low"], cell["ci_high"])],
                "active params": [_cell(p, 6) for p in cell["active_params"]],
                "engine": [engines.get((env, m, float(sp)), "?") for m, sp in zip(cell["method"], cell["sparsity"])],
                "paper": [
                    _paper_dense(paper, study.agent, env) if m == DENSE_METHOD else "— (not given per env)"
                    for m in cell["method"]
                ],
            }
        )
        lines += [markdown_table(rows), ""]
    return lines


def _orientation(paper: Mapping[str, Any], study: StudyDefinition) -> list[str]:
    """The paper's Fig. 1 IQMs of the study's agent family, labelled as a different benchmark."""
    settings = {"dqn": "dqn_cnn"}.get(study.agent, study.agent)
    iqm = paper.get("iqm", {})
    values, methods = iqm.get("values", {}).get(settings), iqm.get("settings", {}).get(settings, {}).get("methods")
    if not values or not methods:
        return []
    header = "| sparsity | " + " | ".join(methods) + " |"
    lines = [header, "|" + "---|" * (len(methods) + 1)]
    for s in study.sparsities:
        if s in values:
            lines.append(f"| {s:g} | " + " | ".join(f"{v:g}" for v in values[s]) + " |")
    norm = iqm["settings"][settings].get("normalisation", "")
    return [
        f"The paper reports no classic-control IQM. For orientation only, its IQM for `{settings}` ({norm}; "
        f"{iqm.get('source', '')}), a different benchmark:",
        "",
        *lines,
        "",
    ]


def mixed_config_cells(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cells (env/method/sparsity) whose records carry more than one config hash."""
    hashes: dict[str, set] = {}
    for r in records:
        hashes.setdefault(f"{r['env']}/{r['method']}/{float(r['sparsity']):g}", set()).add(r.get("config_hash"))
    return sorted(cell for cell, found in hashes.items() if len(found) > 1)


def _seed_counts(records: Sequence[Mapping[str, Any]], study: StudyDefinition) -> tuple[int, int, int]:
    counts: dict[tuple, int] = {}
    for r in records:
        key = key_of(r)
        counts[(key.env, key.method, key.sparsity)] = counts.get((key.env, key.method, key.sparsity), 0) + 1
    per_cell = [counts.get(c, 0) for c in study.cells()]
    return min(per_cell, default=0), max(per_cell, default=0), sum(per_cell)


@dataclass
class StudyTables:
    """Everything the report shows, computed from the table's records."""

    records: list[Mapping[str, Any]]
    runs: list[RunRecord]
    scores: pd.DataFrame
    per_env: pd.DataFrame
    aggregate: pd.DataFrame
    orderings: pd.DataFrame


def study_tables(
    study: StudyDefinition, records: Sequence[Mapping[str, Any]], paper: Mapping[str, Any], reps: int, seed: int
) -> StudyTables:
    """Scores, per-env and aggregate tables and the ordering checks of the records in the study's grid."""
    in_grid = set(study.run_keys(max([int(r["seed"]) + 1 for r in records], default=0)))
    kept = [r for r in records if key_of(r) in in_grid]
    runs = records_to_runs(kept)
    scores = scores_frame(runs)
    if scores.empty:
        return StudyTables(kept, runs, scores, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    normed = normalized_scores(scores, study.low_return)
    return StudyTables(
        kept,
        runs,
        scores,
        per_env_table(scores, reps, seed),
        aggregate_table(normed, reps, seed, False) if not normed.empty else pd.DataFrame(),
        ordering_table(scores, study, orderings_of(paper), reps, seed),
    )


def write_figures(study: StudyDefinition, tables: StudyTables, figures: Path, reps: int, seed: int) -> list[tuple[str, Path]]:
    """The report's figures as (caption, PNG path): curves per env, score vs parameters, IQM, orderings."""
    if tables.scores.empty:
        return []
    agent = study.agent
    made: list[tuple[str, Figure, str]] = []
    for env, data in curve_frame(tables.runs).groupby("env", sort=False):
        fig = plots.learning_curve_figure(data, f"{agent} / {env}", reps, seed)
        made.append((f"Learning curves, {env}", fig, f"curves_{plots.slug(agent)}_{plots.slug(str(env))}"))
    fig = plots.score_params_figure(tables.per_env, tables.scores, agent, "return")
    made.append(("Score vs active parameters", fig, f"params_{plots.slug(agent)}"))
    if not tables.aggregate.empty:
        fig = plots.interval_estimates_figure(tables.aggregate, agent, f"(score − low) / ({REFERENCE_METHOD} − low)")
        made.append(("IQM over envs and seeds", fig, f"iqm_{plots.slug(agent)}"))
    fig = ordering_figure(tables.orderings, study.equivalence_margin, f"{agent}: the paper's orderings")
    made.append(("The paper's orderings", fig, f"orderings_{plots.slug(agent)}"))
    return [(caption, atomic_savefig(fig, figures / stem, FIGURE_FORMATS)[0]) for caption, fig, stem in made]


def write_report(
    study: StudyDefinition,
    records: Sequence[Mapping[str, Any]],
    paper: Mapping[str, Any],
    report: str | os.PathLike[str],
    figures: str | os.PathLike[str],
    command: str,
    reps: int = agg.BOOTSTRAP_REPS,
    seed: int = 0,
) -> list[Path]:
    """Write the study's markdown report and its figures from the table's records alone; return the files."""
    report, figures = Path(report), Path(figures)
    tables = study_tables(study, records, paper, reps, seed)
    drawn = write_figures(study, tables, figures, reps, seed)
    text = report_markdown(study, tables, paper, command, [(c, os.path.relpath(p, report.parent)) for c, p in drawn])
    return [p for _, p in drawn] + [atomic_write_text(report, text)]


def report_markdown(
    study: StudyDefinition,
    tables: StudyTables,
    paper: Mapping[str, Any],
    command: str,
    figures: Sequence[tuple[str, str]],
) -> str:
    """The report page: orderings checked, per-env tables beside the paper, aggregate, figures, deviations."""
    records, orders, per_env, aggregate = tables.records, tables.orderings, tables.per_env, tables.aggregate
    low, high, total = _seed_counts(records, study)
    lines = [
        f"# Results: {study.title}",
        "",
        f"Regenerate with `{command}` (it runs what is missing, then rewrites this page from the table "
        f"`{study.table}` alone). Study `{study.name}`: agent `{study.agent}`, envs {', '.join(study.envs)}, methods "
        f"{', '.join(study.methods)}, sparsities {', '.join(f'{s:g}' for s in study.sparsities)}.",
        "",
        f"- Runs recorded: **{total}** of {len(study.cells()) * study.seeds} planned ({study.seeds} seeds per cell); "
        f"seeds per cell: {low}–{high}. Every table gives each cell's seed count.",
        "- Per-run score: mean of the last 10% of evaluations (Graesser et al. 2022, Sec. 3), episodes averaged first.",
        "- Per env: mean over seeds with a 95% percentile bootstrap CI (rliable); one seed has no interval.",
        f"- Code versions in the table: {', '.join(sorted({str(r.get('code_version')) for r in records})) or '—'}. "
        f"Cells whose runs differ in config (agent, env, sparsity): {', '.join(mixed_config_cells(records)) or 'none'}.",
        "- Engine: `sb3` runs were trained by SB3's own loop (`python -m sparse_rl.run`), `population` runs by the "
        "population engine (`hydra/launcher=population`), whose members are parity-tested against SB3 "
        "(docs/testing.md); the per-env tables say which trained each cell.",
        "",
        "## The paper's orderings, checked",
        "",
        f"P(a > b) is rliable's probability of improvement (Mann–Whitney per env, averaged over envs) with a 95% "
        f"stratified bootstrap CI. A claim is **held** when the whole CI lies in what it accepts (`>`: above 0.5; "
        f"`≥`: at least 0.5 − {study.equivalence_margin:g}; `≈`: within 0.5 ± {study.equivalence_margin:g}, our "
        "margin, not the paper's), **not held** when the whole CI lies outside, and **inconclusive** otherwise: "
        "an inconclusive claim is not a success. Fewer than two seeds on a side give **no data**.",
        "",
    ]
    if orders.empty:
        lines += ["No completed run yet.", ""]
    else:
        shown = orders.assign(
            **{
                "P(a>b) [95% CI]": [
                    _ci(p, lo, hi) for p, lo, hi in zip(orders["p_improvement"], orders["ci_low"], orders["ci_high"])
                ]
            }
        )[["sparsity", "claim", "P(a>b) [95% CI]", "n_envs", "seeds", "verdict", "source"]]
        lines += [markdown_table(shown), ""]
    lines += ["## Per environment (raw returns)", "", *per_env_markdown(per_env, study, paper, records)]
    lines += ["## Aggregate", ""]
    if aggregate.empty:
        lines += ["Needs a completed dense run per env.", ""]
    else:
        norm = ", ".join(f"{e}: {v:g}" for e, v in study.low_return.items())
        shown = aggregate[["label", "iqm", "ci_low", "ci_high", "n_envs", "n_seeds"]].copy()
        one = shown["n_seeds"] < 2  # a single seed per env has no interval
        cis = zip(shown["iqm"], shown["ci_low"].mask(one), shown["ci_high"].mask(one))
        shown.insert(1, "IQM [95% CI]", [_ci(v, lo, hi) for v, lo, hi in cis])
        lines += [
            f"IQM over envs × seeds of (score − low) / (our dense mean − low), low = the worst return within the "
            f"time limit ({norm}); 95% stratified bootstrap CIs.",
            "",
            markdown_table(shown[["label", "IQM [95% CI]", "n_envs", "n_seeds"]]),
            "",
        ]
    lines += _orientation(paper, study)
    lines += ["## Figures", ""]
    lines += [f"![{caption}]({path})" for caption, path in figures] or ["None yet."]
    lines += ["", "## Deviations from the paper's protocol", ""]
    lines += [f"- {d}" for d in study.deviations] or ["- None listed."]
    lines += ["", f"Paper values: `{study.paper}` ({paper.get('paper', '')})."]
    return "\n".join(lines) + "\n"
