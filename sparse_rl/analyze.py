"""``python -m sparse_rl.analyze RUNS_DIR``: tables and plots for every run under a directory.

Finds run directories (any directory with ``.hydra/config.yaml``), scores each run as the mean of its
last 10% of evaluations, aggregates with rliable (IQM over envs × seeds with stratified bootstrap 95% CIs,
probability of improvement over the width-matched dense network, performance profiles) and writes
``results.md``, ``per_env.csv``, ``aggregate.csv``, ``runs.csv`` and PNG/PDF plots. Broken or unfinished
runs are listed with the reason and left out; the exit status is 0 unless no run is usable at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from analysis.aggregate import BOOTSTRAP_REPS
from analysis.normalize import NORMALIZATIONS, NormalizationError
from analysis.report import DEFAULT_OUT, NoUsableRunsError, analyze
from analysis.tables import markdown_table

EXIT_NO_RUNS = 2
EXIT_BAD_NORMALIZATION = 3


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m sparse_rl.analyze",
        description=__doc__.split("\n\n", 1)[1].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m sparse_rl.analyze runs/sac --normalize dense --reps 2000",
    )
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="directory searched recursively for run directories")
    parser.add_argument("--out", metavar="DIR", help=f"output directory (default: RUNS_DIR/{DEFAULT_OUT})")
    parser.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="raw",
        help="raw returns, or divided per agent/env by the mean score of 'dense' at sparsity 0 (default: raw)",
    )
    parser.add_argument(
        "--reps", type=int, default=BOOTSTRAP_REPS, metavar="N", help=f"bootstrap replications (default: {BOOTSTRAP_REPS})"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="numpy seed for the bootstrap (default: 0)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analysis; print the aggregate table and the excluded runs. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    try:
        result = analyze(args.runs_dir, args.out, args.normalize, args.reps, args.seed, make_plots=not args.no_plots)
    except NoUsableRunsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_RUNS
    except NormalizationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_NORMALIZATION
    n_scored = len(result.scores)
    print(f"{len(result.runs)} runs found, {n_scored} scored; normalisation: {result.normalization}")
    print()
    print(
        markdown_table(result.aggregate.drop(columns=["method", "sparsity"])) if n_scored else "No completed run to score yet."
    )
    if n_scored and result.poi_note is not None:
        print(f"\nnote: {result.poi_note}")
    problems = result.problem_runs
    if not problems.empty:
        print(f"\n{len(problems)} runs excluded from scores:")
        for row in problems.itertuples(index=False):
            use = "curves only" if row.usable == "curves" else "unusable"
            print(f"  {row.path} ({use}): {row.issues}")
    print(f"\nwrote {len(result.files)} files to {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
