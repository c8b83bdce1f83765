"""What every benchmark here shares: one thread, a clock for wall and CPU time, interleaved rounds, and
the floor — this machine's measured matrix-multiply rate and memory read bandwidth.

A floor is what a path would take if it ran at the measured dense-matmul rate on its arithmetic or
at the measured read bandwidth on its input, whichever is slower; ``× floor`` in the tables is the
measured time over that.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def one_thread() -> None:
    """One torch thread, and one thread for numpy's BLAS (through threadpoolctl, a scikit-learn dependency)."""
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        pass


@dataclass
class Timing:
    """Wall-clock and process CPU seconds of one timed call."""

    wall: float
    cpu: float


def timed(fn: Callable[[], object]) -> tuple[Timing, object]:
    """Run ``fn`` once; its wall and CPU seconds and its return value."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), out


def interleaved(paths: dict[str, Callable[[], Timing]], rounds: int) -> dict[str, Timing]:
    """Median wall and CPU seconds of every path over ``rounds`` rounds, the paths taking turns in each
    round, so a change in the machine's load hits them alike."""
    samples: dict[str, list[Timing]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            samples[name].append(path())
    return {
        name: Timing(statistics.median(t.wall for t in runs), statistics.median(t.cpu for t in runs))
        for name, runs in samples.items()
    }


@dataclass
class Floor:
    """This machine's measured ceilings, one thread."""

    sgemm: float  # float32 matmul FLOP/s
    dgemm: float  # float64 matmul FLOP/s
    read: float  # bytes/s reading an array far larger than the caches

    def seconds(self, flops: float, nbytes: float, dtype: torch.dtype = torch.float32) -> float:
        """Time at the floor: the arithmetic at the matmul rate or the bytes at the read rate, whichever is slower."""
        rate = self.sgemm if dtype == torch.float32 else self.dgemm
        return max(flops / rate, nbytes / self.read)


def measure_floor(device: str = "cpu", repeats: int = 7) -> Floor:
    """Best of ``repeats`` runs of a 1024³ matmul (float32 and float64) and of summing 256 MiB on ``device``.

    On the CPU in CPU time, like the paths compared against it (on a loaded machine wall time would
    halve the floor); on a GPU in wall time after synchronising.
    """
    device = torch.device(device)

    def best(fn: Callable[[], object]) -> float:
        def run() -> object:
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

        run()  # warm-up: first calls load kernels and allocate
        return min(getattr(timed(run)[0], "wall" if device.type == "cuda" else "cpu") for _ in range(repeats))

    rates = {}
    for dtype in (torch.float32, torch.float64):
        a, b = (torch.randn(1024, 1024, dtype=dtype, device=device) for _ in range(2))
        rates[dtype] = 2 * 1024**3 / best(lambda: torch.mm(a, b))
    big = torch.ones(64 << 20, device=device)  # 256 MiB: eight times the last-level cache of most CPUs
    return Floor(sgemm=rates[torch.float32], dgemm=rates[torch.float64], read=big.numel() * 4 / best(lambda: big.sum()))


_FMA_LOOP = """
def fma_loop(x, w, reps):
    zero = x.dtype.type(0)
    out = np.zeros(8, x.dtype)
{weights}
    for _ in range(reps):
{zeros}
        for i in range(x.shape[0]):
            v = x[i]
{fmas}
{sums}
    return out
"""


def measure_fma_peak(dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """This core's peak multiply-add rate in FLOP/s (CPU time, one thread, best of ``repeats``), from a
    minimal numba loop: 16 independent multiply-adds into 8 running sums per value read from a 16 kB
    array that stays in L1, so nothing but the multiply-add units limits it. Fewer multiply-adds per
    value left it bound by the loads (half the rate), more accumulators by register spills.

    A kernel's FLOPs at this rate are a floor it cannot beat: no instruction does more than one
    vector multiply-add, and compares, selects and plain adds count one FLOP per lane like an add.
    """
    import numba
    import numpy as np

    source = _FMA_LOOP.format(
        weights="\n".join(f"    w{k} = w[{k}]" for k in range(16)),
        zeros="\n".join(f"        a{k} = zero" for k in range(8)),
        fmas="\n".join(f"            a{k % 8} += v * w{k}" for k in range(16)),
        sums="\n".join(f"        out[{k}] += a{k}" for k in range(8)),
    )
    namespace = {"np": np}
    exec(source, namespace)  # noqa: S102 - a fixed, generated loop
    loop = numba.njit(fastmath=True)(namespace["fma_loop"])
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    x, w = np.linspace(0, 1, 4096, dtype=np_dtype), np.linspace(0, 1, 16, dtype=np_dtype)
    loop(x, w, 1)  # compile
    reps = 2000
    best = min(timed(lambda: loop(x, w, reps))[0].cpu for _ in range(repeats))
    return 2 * 16 * x.size * reps / best


def describe_machine(floor: Floor) -> str:
    """One line naming the machine, the load and the measured floor."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, torch threads {torch.get_num_threads()}; "
        f"load average {load}; floor: sgemm {floor.sgemm / 1e9:.0f} GFLOP/s, dgemm {floor.dgemm / 1e9:.0f} GFLOP/s, "
        f"read {floor.read / 1e9:.0f} GB/s"
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
