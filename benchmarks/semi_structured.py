"""Does torch's semi-structured 2:4 kernel beat a dense ``F.linear`` at our layer sizes?

    python benchmarks/semi_structured.py                  # CPU, and CUDA when available (< 60 s)
    python benchmarks/semi_structured.py --batch 256 --min-run-time 0.2

Per layer shape ``[out, in]`` (SAC/DQN hidden 256×256, 512×512 wider nets, 256×obs input layers of MuJoCo
envs, 1024×1024 for scale) and batch size, the weight gets a random 2:4 mask from the core
(:class:`sparse_rl.structure.NMStructure`), is converted with ``torch.sparse.to_sparse_semi_structured`` and timed
against the dense masked weight (same values) in ``F.linear``. A device/dtype/shape torch refuses is reported with
its exception message, not skipped silently. For reference, torch's general sparse kernel (CSR ``mm``, 50% dense) is
timed too. Results go to stdout as a markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse_rl.structure import NMStructure

SHAPES = [(256, 256), (512, 512), (1024, 1024), (256, 17), (256, 376)]  # [out, in]; 17: HalfCheetah, 376: Humanoid
DEVICES = {"cpu": [torch.float32], "cuda": [torch.float16, torch.bfloat16]}  # the dtypes torch's kernels take
MAX_MESSAGE_CHARS = 110


def _time(fn, min_run_time: float) -> float:
    """Median seconds per call (torch.utils.benchmark: warm-up and CUDA synchronisation included)."""
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def _short(error: Exception) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def measure(device: str, dtype: torch.dtype, shape: tuple[int, int], batch: int, min_run_time: float) -> dict:
    generator = torch.Generator().manual_seed(0)
    mask = NMStructure(2, 4).random_mask(shape, generator)
    weight = (torch.randn(shape, generator=generator) * mask).to(device=device, dtype=dtype)
    x = torch.randn(batch, shape[1], generator=generator).to(device=device, dtype=dtype)
    row = {"device": device, "dtype": str(dtype).removeprefix("torch."), "shape": f"{shape[0]}x{shape[1]}"}
    row["dense_us"] = _time(lambda: F.linear(x, weight), min_run_time) * 1e6
    try:  # the general sparse kernel torch has on every device, for reference: W_csr @ x^T at 50% density
        csr, xt = weight.to_sparse_csr(), x.t().contiguous()
        row["csr_us"] = _time(lambda: torch.mm(csr, xt), min_run_time) * 1e6
    except Exception:  # a dtype without CSR matmul: the column shows —
        pass
    try:
        sparse = torch.sparse.to_sparse_semi_structured(weight)
        error = (F.linear(x, sparse) - F.linear(x, weight)).abs().max().item()
        row["sparse_us"] = _time(lambda: F.linear(x, sparse), min_run_time) * 1e6
        row["speedup"] = row["dense_us"] / row["sparse_us"]
        row["note"] = f"max |diff| {error:.2g}"
    except Exception as exc:  # torch refuses the device, dtype or shape: report why
        row["note"] = _short(exc)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="rows of x (the paper's SAC/DQN batch size)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds of timing per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the project's CPU setting (torch_threads: 1)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, batch {args.batch}, 1 CPU thread; CUDA: {torch.cuda.is_available()}")
    if not torch.cuda.is_available():
        print("CUDA not available: GPU rows skipped")
    print(
        "\n| device | dtype | W [out x in] | dense F.linear (µs) | 2:4 semi-structured (µs) | speedup | CSR mm (µs) | note |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for device in devices:
        for dtype in DEVICES[device]:
            for shape in SHAPES:
                r = measure(device, dtype, shape, args.batch, args.min_run_time)
                sparse = f"{r['sparse_us']:.1f}" if "sparse_us" in r else "—"
                speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "—"
                csr = f"{r['csr_us']:.1f}" if "csr_us" in r else "—"
                cells = [r["device"], r["dtype"], r["shape"], f"{r['dense_us']:.1f}", sparse, speedup, csr, r["note"]]
                print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
