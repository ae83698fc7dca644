"""Every benchmark script starts as the README runs it (``python benchmarks/NAME.py``, from any folder): its
``--help`` works, so its imports do. The measurements themselves are run by hand (docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.stem)
def test_benchmark_script_starts(script, tmp_path):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
    assert "usage" in result.stdout.lower()


def test_population_benchmark_runs_twice(tmp_path):
    """Its run directories go to a fresh folder by default: a second run does not trip over the first's."""
    script = next(path for path in BENCHMARKS if path.stem == "population")
    command = [sys.executable, str(script), "--agents", "dqn", "--methods", "dense", "--sizes", "1", "--seconds", "0.2"]
    for _ in range(2):
        result = subprocess.run([*command, "--no-sb3"], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
        assert "member-steps/s" in result.stdout
