"""Host → device path of sparse batches: pinned on a background thread, copied asynchronously.

A batch's counts stay a sparse CSR tensor all the way to the device (about 6 bytes per stored value instead of
4 bytes per gene), and are densified and normalised there (:func:`cellssl.data.normalize.normalized_dense`).
Pinning copies a batch into page-locked host memory, which lets the copy to a GPU run asynchronously
(``non_blocking``) while the host prepares the next step; it runs in :func:`in_background`, so neither the copy
into pinned memory nor the batch assembly before it holds up the training loop.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
U = TypeVar("U")
_DONE = object()


def _tensor_to(tensor: Tensor, device: torch.device) -> Tensor:
    if tensor.layout == torch.sparse_csr:  # component by component, each copy asynchronous from pinned memory
        return torch.sparse_csr_tensor(
            tensor.crow_indices().to(device, non_blocking=True),
            tensor.col_indices().to(device, non_blocking=True),
            tensor.values().to(device, non_blocking=True),
            size=tensor.shape,
            check_invariants=False,
        )
    return tensor.to(device, non_blocking=True)


def batch_to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Every tensor of ``batch`` on ``device`` (asynchronous copies when the batch is pinned); sparse stays sparse."""
    device = torch.device(device)
    return {k: _tensor_to(v, device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def pin_batch(batch: dict[str, Any], device: torch.device | None = None) -> dict[str, Any]:
    """A copy of ``batch`` in page-locked memory (sparse CSR tensors: their three arrays; torch pins them natively).

    ``device``: the GPU the batch is for. Pinning needs a CUDA context, and a new thread's current device is GPU 0,
    so without it every DDP rank's pinning thread would open a context on GPU 0 (as torch's own pinning thread
    avoids by setting the device first).
    """
    with torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext():
        return {k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in batch.items()}


def is_pinned(batch: dict[str, Any]) -> bool:
    """Whether every tensor of ``batch`` lies in page-locked memory."""
    return all(v.is_pinned() for v in batch.values() if isinstance(v, Tensor))


def in_background(items: Iterable[T], transform: Callable[[T], U], depth: int = 2) -> Iterator[U]:
    """``transform(item)`` for every item, in order, produced by a daemon thread up to ``depth`` items ahead.

    The thread also drives ``items`` itself (reading and batch assembly), so these overlap the consumer's work.
    An exception in the thread is raised in the consumer; when the consumer stops early (``close()``, or the
    generator is dropped), the thread stops at its next item.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not offer((transform(item), None)):
                    return
            offer((_DONE, None))
        except BaseException as error:  # handed to the consumer, which raises it
            offer((None, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator stopped early releases its reader here, in its own thread
                close()

    thread = threading.Thread(target=produce, name="cellssl-stage", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
