"""The process-wide torch settings a run's config chooses: CPU threads and denormal flushing (both paths)."""

from __future__ import annotations

from typing import Any

import torch


def apply_torch_settings(cfg: Any) -> None:
    """``torch_threads`` CPU threads; ``flush_denormal``: flush float32 denormals (|x| < 1.2e-38) to zero on CPU.

    Flushing is TensorFlow's behaviour, so the paper's (TF-Agents) runs had it: TF executes its kernels under
    ``port::ScopedFlushDenormal`` (``tensorflow/core/platform/denormal.h``). Without it, weights and Adam moments
    that decay towards zero become denormal and every matrix product slows down: DQN at 512-512 ran 13 instead
    of 195 env steps/s late in training (``benchmarks/denormals.py``, ``docs/performance.md``).
    ``torch.set_flush_denormal`` sets the calling thread's flags (x86 SSE3; a no-op where unsupported).
    """
    torch.set_num_threads(int(cfg.torch_threads))
    torch.set_flush_denormal(bool(cfg.flush_denormal))
