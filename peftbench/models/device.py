"""The accelerator as training sees it: its memory statistics and whether it computes in bf16 natively.

One small interface, so that the logic only a GPU exercises (the memory probe's plan, the peak memory a run
records, the precision policy) runs unchanged against a simulated GPU in the CPU tests
(``tests/simulated_gpu.py``), and ``peftbench doctor`` checks the real one.
"""

from __future__ import annotations

import resource
from typing import Protocol

import torch


class DeviceMemory(Protocol):
    """An allocator's statistics, as ``torch.cuda`` reports them."""

    @property
    def total_bytes(self) -> int: ...

    def reset_peak(self) -> None:
        """From now on, the peak is what is allocated now or later."""

    def peak_bytes(self) -> int: ...

    def held_bytes(self) -> int:
        """The most the allocator has held from the device since the last reset: the peak plus fragmentation."""

    def release_cache(self) -> None:
        """Give cached, unused blocks back, so the next peak is measured from what is really held."""


class CudaMemory:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def total_bytes(self) -> int:
        return torch.cuda.get_device_properties(self.device).total_memory

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def held_bytes(self) -> int:
        return torch.cuda.max_memory_reserved(self.device)

    def release_cache(self) -> None:
        torch.cuda.empty_cache()


def device_memory(device: torch.device) -> DeviceMemory | None:
    """The memory statistics of the device a process trains on; None on a CPU (no allocator to ask)."""
    return CudaMemory(device) if device.type == "cuda" else None


def peak_memory(memory: DeviceMemory | None) -> dict[str, float]:
    """GPU: the most torch allocated since the last reset; CPU: the peak resident set size of this process."""
    if memory is not None:
        return {"peak_gpu_mem_gb": round(memory.peak_bytes() / 2**30, 3)}
    return {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def native_bf16() -> bool:
    """Whether the GPU computes in bf16 in hardware (compute capability 8.0 and newer). torch's
    ``is_bf16_supported()`` is also true where bf16 is only emulated (V100, T4), many times slower than fp16."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
