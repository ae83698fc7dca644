"""``python -m sparse_rl.study NAME [KEY=VALUE ...]``: run a named study to completion and write its report.

A study (``configs/study/NAME.yaml``) is a grid of runs plus the report made from it. The command records every
completed run of the grid found under ``run_root`` in the study's committed table, trains the runs the table still
lacks as ``python -m sparse_rl.run -m`` sweeps (unfinished run directories are continued), and rewrites the report
and its figures from the table alone. Rerun the same command to continue: recorded runs are never trained again.

Study keys: run_root=DIR, seeds=N (seeds 0..N-1 per cell), table=, report=, figures= (paths). Every other
KEY=VALUE goes to each sweep, e.g. hydra/launcher=local hydra.launcher.n_jobs=2, or hydra/launcher=population.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from analysis.study import StudyError
from experiment.study import available_studies, run_study


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m sparse_rl.study",
        description=__doc__.split("\n\n", 1)[1].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m sparse_rl.study paper_dqn_classic run_root=runs/study hydra/launcher=local",
    )
    parser.add_argument("name", metavar="NAME", nargs="?", help=f"the study: {', '.join(available_studies())}")
    parser.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="study keys and sweep overrides")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument("--no-run", action="store_true", help="record completed runs and rewrite the report only")
    parser.add_argument("--dry-run", action="store_true", help="print the sweeps it would launch; write nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; errors are one line on stderr. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available_studies()))
        return 0
    if args.name is None:
        parser.error(f"give a study name: {', '.join(available_studies())}")
    try:
        return run_study(args.name, args.overrides, run=not args.no_run, dry_run=args.dry_run)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: recorded runs are kept in the table; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
