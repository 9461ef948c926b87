"""Measuring one part of the pipeline: seconds (median of the repeats), peak memory and latent rows through the
diffusion model, and each part's ratios to the plain generation measured in the same run.

On a GPU, peak memory is CUDA's max allocated per part; on the CPU the process's peak RSS during the part (reset
before each part through Linux's ``/proc/self/clear_refs``; elsewhere the peak so far, which only grows).
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass
class Part:
    name: str
    seconds: float
    peak_mib: float
    unet_rows: int = 0  # latent rows through the UNet (one row: one image, one CFG half, one step)
    backward_rows: int = 0  # of those, rows whose pass was differentiated (one backward each)
    time_ratio: float = 0.0
    memory_ratio: float = 0.0
    rows_ratio: float = 0.0


def reset_cpu_peak() -> bool:
    """Reset the process's peak RSS (Linux: ``/proc/self/clear_refs`` 5); False where it cannot be.

    Memory freed by earlier parts is first handed back to the system (glibc's ``malloc_trim``),
    or the allocator's retained pages would count as this part's."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, fn: Callable[[], object], device: torch.device, repeats: int,
             rows: list[int] | None = None) -> Part:
    times, peaks = [], []
    first_rows, first_backward = (rows[0], rows[1]) if rows else (0, 0)
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            reset_cpu_peak()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        peaks.append(peak_mib(device))
    part = Part(name, statistics.median(times), max(peaks), (rows[0] - first_rows) // repeats if rows else 0,
                (rows[1] - first_backward) // repeats if rows else 0)
    logger.info("%-34s %8.2f s %10.0f MiB %8d rows %6d backward", name, part.seconds, part.peak_mib,
                part.unet_rows, part.backward_rows)
    return part


def key(name: str, batch: int) -> str | tuple[str, int]:
    return name if batch == 1 else (name, batch)


def chain(*parts: Callable[[], None]) -> Callable[[], None]:
    def fn():
        for part in parts:
            part()
    return fn


def with_ratios(parts: list[Part]) -> list[Part]:
    """Each part's ratios to the first, the plain generation."""
    for part in parts:
        part.time_ratio = round(part.seconds / parts[0].seconds, 2)
        part.memory_ratio = round(part.peak_mib / parts[0].peak_mib, 2)
        part.rows_ratio = round(part.unet_rows / parts[0].unet_rows, 2)
    return parts
