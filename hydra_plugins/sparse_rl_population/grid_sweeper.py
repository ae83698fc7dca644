"""``hydra/sweeper=grid`` (the default, ``configs/config.yaml``): Hydra's basic sweeper (same override syntax,
``hydra.sweeper.params``, ``max_batch_size``) made for grids of thousands of jobs:

- every job's config is composed by :class:`experiment.grid.SweepComposer` (once per config-group combination),
  which is what keeps the submit host's check of the paper's 2,250-job SAC grid under a minute;
- a failed, skipped or interrupted job does not stop the sweep (Hydra's basic sweeper re-raises the first failure
  after its batch, so later batches never ran);
- a sweep whose every job is refused (e.g. run directories a live process holds) changes nothing, not even the
  ``multirun.yaml`` an earlier sweep of the same folder wrote;
- at the end one line counts the outcomes (``sweep: 12 job(s): 11 completed, 1 failed``), one line per job that did
  not complete follows, and the command exits with status 1 unless every job completed (or was submitted, for a
  submit-and-return launch).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
MAX_PROBLEM_LINES = 20  # jobs listed by name after the summary line; the rest are counted


class GridSweeper(BasicSweeper):
    """Hydra's :class:`BasicSweeper` with fast composition, no stop at a failed job, and a summary exit status."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job (fast) so a composition error stops the sweep before anything is launched."""
        from experiment.grid import composer_for

        if getattr(self.launcher, "composes_all_jobs", False):  # the launcher composes (and checks) them itself
            return
        assert self.hydra_context is not None and self.config is not None
        composer = composer_for(self.hydra_context.config_loader, self.config)
        for overrides in batch:
            composer.compose(overrides)

    def sweep(self, arguments: list[str]) -> Any:
        from experiment.grid import sweep_report

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        multirun = sweep_dir / "multirun.yaml"
        existed = multirun.exists()
        if not existed:  # a new sweep folder records its sweep at once (a killed sweep keeps it)
            OmegaConf.save(self.config, multirun)
        returns: list[Sequence[JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            tic = time.perf_counter()
            self.validate_batch_is_legal(batch)
            log.debug(f"validated {len(batch)} job configs in {time.perf_counter() - tic:.2f} s")
            returns.append(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            initial_job_idx += len(batch)
        report = sweep_report([ret for batch_returns in returns for ret in batch_returns])
        if existed and any(outcome != "skipped" for outcome in report.counts.elements()):
            OmegaConf.save(self.config, multirun)  # a sweep whose every job was refused changes nothing
        print(report.line, file=sys.stderr if report.exit_status else sys.stdout, flush=True)
        for line in report.problems[:MAX_PROBLEM_LINES]:
            print(line, file=sys.stderr)
        if len(report.problems) > MAX_PROBLEM_LINES:
            print(f"  ... and {len(report.problems) - MAX_PROBLEM_LINES} more", file=sys.stderr)
        if report.exit_status:
            raise SystemExit(report.exit_status)
        return returns
