"""A GPU's memory statistics on the CPU, for the logic only a GPU exercises (the probe's plan, what peak a run
records): allocated memory is modelled as the bytes autograd keeps for backward.

While active, every tensor autograd saves (weights excluded, each storage once) counts as allocated until
autograd lets go of it, after backward or when the graph is dropped. The count is ``bench memory``'s
(``saved_storages``): it sees what gradient checkpointing and dropout change, and the shape of what runs. It
never raises out-of-memory (torch leaks the graph of a forward whose saved-tensor hook raises): a peak over
``total_bytes`` is what does not fit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import TracebackType

import torch


class _Saved:
    """What autograd holds instead of a saved tensor: releases its bytes when autograd drops it."""

    def __init__(self, tensor: torch.Tensor, release: Callable[[], None]) -> None:
        self.tensor, self.release = tensor, release

    def __del__(self) -> None:
        self.release()


class SimulatedGPU:
    """``scale``: bytes each saved byte stands for, so a tiny model's activations read as a real model's in the
    statistics a run records (GiB, to three decimals)."""

    def __init__(self, total_bytes: int, scale: int = 1) -> None:
        self.total_bytes, self.scale = total_bytes, scale
        self.holders: Counter[int] = Counter()  # storage -> saved tensors holding it
        self.sizes: dict[int, int] = {}
        self.allocated = self.peak = 0
        self.peaks_read: list[int] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda saved: saved.tensor)

    def __enter__(self) -> SimulatedGPU:
        self._hooks.__enter__()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._hooks.__exit__(kind, error, trace)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor | _Saved:
        if isinstance(tensor._base if tensor._base is not None else tensor, torch.nn.Parameter):
            return _Saved(tensor, lambda: None)  # a weight, or a view of one: not an activation
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes() * self.scale
        if not self.holders[pointer]:
            self.sizes[pointer] = size
            self.allocated += size
            self.peak = max(self.peak, self.allocated)
        self.holders[pointer] += 1
        return _Saved(tensor, lambda: self._release(pointer))

    def _release(self, pointer: int) -> None:
        self.holders[pointer] -= 1
        if not self.holders[pointer]:
            self.allocated -= self.sizes.pop(pointer)

    # DeviceMemory
    def reset_peak(self) -> None:
        self.peak = self.allocated

    def peak_bytes(self) -> int:
        self.peaks_read.append(self.peak)
        return self.peak

    def held_bytes(self) -> int:
        return self.peak  # no fragmentation

    def release_cache(self) -> None:
        pass
