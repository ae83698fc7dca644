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
