"""The typed record of one run directory, with the issues found while loading it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

# broken: unusable; incomplete: learning curve only (no score); note: informative, nothing excluded.
Severity = Literal["broken", "incomplete", "note"]


@dataclass(frozen=True)
class Issue:
    """A problem found with a run and how much of the run it rules out."""

    severity: Severity
    message: str


def run_label(method: str, sparsity: float) -> str:
    """An "algorithm" name for rliable: the method at one sparsity, e.g. ``rigl_s0.9`` or ``dense_s0.0``."""
    return f"{method}_s{float(sparsity)}"


@dataclass
class RunRecord:
    """One run: identity, evaluation curve (per-eval mean episode return), recomputed score and issues."""

    path: Path
    agent: str | None = None
    env: str | None = None
    method: str | None = None
    sparsity: float | None = None
    seed: int | None = None
    status: str = "unknown"
    timesteps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    returns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    score: float | None = None
    summary_score: float | None = None
    active_params: int | None = None
    issues: list[Issue] = field(default_factory=list)

    def add(self, severity: Severity, message: str) -> None:
        """Record an issue."""
        self.issues.append(Issue(severity, message))

    @property
    def identified(self) -> bool:
        """Whether agent, env, method, sparsity and seed are all known."""
        return None not in (self.agent, self.env, self.method, self.sparsity, self.seed)

    def identity(self) -> dict[str, object]:
        """The columns that identify a run in every table: agent, env, method, sparsity, label, seed."""
        return {"agent": self.agent, "env": self.env, "method": self.method, "sparsity": self.sparsity,
                "label": self.label, "seed": self.seed}  # fmt: skip

    @property
    def label(self) -> str:
        """The method-at-sparsity label, e.g. ``rigl_s0.9``."""
        if self.method is None or self.sparsity is None:
            return "unknown"
        return run_label(self.method, self.sparsity)

    def has(self, severity: Severity) -> bool:
        """Whether any issue of ``severity`` was recorded."""
        return any(issue.severity == severity for issue in self.issues)

    @property
    def usable_for_curves(self) -> bool:
        """Identified, not broken, with at least one evaluation."""
        return self.identified and not self.has("broken") and len(self.returns) > 0

    @property
    def usable_for_scores(self) -> bool:
        """Usable for curves, finished (status completed, full length) and scored."""
        return self.usable_for_curves and not self.has("incomplete") and self.score is not None

    def reasons(self, severities: tuple[Severity, ...] = ("broken", "incomplete")) -> str:
        """The messages of the issues of the given severities, joined with "; "."""
        return "; ".join(issue.message for issue in self.issues if issue.severity in severities)
