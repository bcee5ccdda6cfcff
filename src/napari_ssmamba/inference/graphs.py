"""The classifier's forward pass replayed from CUDA graphs, one per batch-size bucket.

An eager forward of SSMamba launches a few hundred kernels per batch, each from Python. While the
tile reader's thread also needs the interpreter, those launches wait for it and the GPU idles. A
captured graph launches a whole batch (conversion, normalisation, model, softmax, attention
pooling) in one call. Batches are padded up to a bucket size (powers of two up to
:data:`BUCKET_STEP`, then its multiples) so that a few graphs serve every batch; the padding rows
hold whatever the previous batch left there and their outputs are dropped (every op of the model in
eval mode is per sample).

Graphs are kept per model, device and settings for the model's lifetime, and captured again when
its parameters or buffers have moved (``model.to(...)`` and back, new weights assigned): checked
by :meth:`GraphedClassifier.follow`, once per run, not per batch (walking a model's tensors takes
a fraction of a millisecond). The first capture of a bucket in a process costs most of a second
(cuDNN plans the convolutions for the new shape), so a batch without a graph of its own runs in a
larger one already captured, and runs are cut to the buckets there are (:func:`fit_to_buckets`).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

#: batches above this size are padded to a multiple of it; below, to a power of two
BUCKET_STEP = 32

#: id(model) -> {settings: GraphedClassifier}; an entry leaves with its model
_per_model: dict[int, dict] = {}


def bucket_size(n: int) -> int:
    """The batch size a graph is captured for, so that ``n`` tiles fit: 1, 2, 4, ..., 32, 64, 96, ..."""
    if n < 1:
        raise ValueError(f"a batch holds at least one tile, not {n}")
    if n <= BUCKET_STEP:
        return 1 << (n - 1).bit_length()
    return -(-n // BUCKET_STEP) * BUCKET_STEP


def fit_to_buckets(sizes, captured) -> list[int]:
    """``sizes`` cut again so that every batch runs in a ``captured`` bucket: each size either
    runs whole, padded in the smallest captured bucket that holds it, or is split into captured
    buckets and a rest, whichever pads the fewest tiles (on a tie, the fewest batches)."""
    captured = tuple(sorted(set(captured), reverse=True))
    if not captured or all(bucket_size(size) in captured for size in sizes):
        return list(sizes)
    return [part for size in sizes for part in _fit_one(size, captured)]


@functools.lru_cache(maxsize=256)
def _fit_one(size: int, captured: tuple[int, ...]) -> tuple[int, ...]:
    """The parts :func:`fit_to_buckets` cuts ``size`` into (``captured``: largest first)."""
    best = {0: (0, ())}  # size -> (tiles run, padding included; its parts), larger parts first
    for n in range(1, size + 1):
        holding = [b for b in captured if b >= n]
        choice = (min(holding), (n,)) if holding else (math.inf, (n,))
        for bucket in (b for b in captured if b < n):
            padded, parts = best[n - bucket]
            if (bucket + padded, 1 + len(parts)) < (choice[0], len(choice[1])):
                choice = (bucket + padded, (bucket, *parts))
        best[n] = choice
    return best[size][1]


def walk_model(model) -> tuple[list, bool]:
    """``model``'s parameters and buffers (shared ones as often as they are held), and whether any
    of its modules is training: one pass over the module tree, without the names that
    ``modules()`` builds (0.15 ms for ``ssmamba_tiny`` on a CI-class CPU, against 0.25 ms through
    ``modules()`` and 0.49 ms through ``parameters()``, ``buffers()`` and ``modules()``)."""
    tensors, training, modules = [], False, [model]
    while modules:
        module = modules.pop()
        training |= module.training
        tensors += [t for t in module._parameters.values() if t is not None]
        tensors += [t for t in module._buffers.values() if t is not None]
        modules += [m for m in module._modules.values() if m is not None]
    return tensors, training


def _storage_layout(model, tensors=None) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in tensors or walk_model(model)[0])


class GraphedClassifier:
    """``forward(model, tiles, *constants)`` replayed from a CUDA graph per (bucket, tile shape).

    ``forward`` takes uint8 (b, h, w, 3) tiles on the device and returns a tuple of tensors with the
    batch first. ``constants`` (e.g. normalisation tensors) are owned here, so the graphs can read
    them for as long as they live.
    """

    def __init__(self, forward: Callable, device, constants: Iterable = ()):
        self.forward = forward
        self.device = device
        self.constants = tuple(constants)
        self.failure: str | None = None  # why graphs are not used, once a capture failed
        self._graphs: dict = {}  # (bucket, h, w) -> (graph, static input, static outputs)
        self._pool = None
        self._layout = None
        # one replay at a time: the graphs share their input, output and pool memory
        self._lock = threading.Lock()
        self._replayed = None  # event after the last replay's outputs were copied out

    def follow(self, model, tensors=None) -> None:
        """Drop every graph if ``model``'s parameters or buffers (``tensors``, if given) have moved
        since the graphs were captured."""
        layout = _storage_layout(model, tensors)
        with self._lock:
            self._drop_if_moved(layout)

    def _drop_if_moved(self, layout: tuple[int, ...]) -> None:
        if layout != self._layout:  # first use, or the weights moved: every graph is stale
            self._graphs.clear()
            self._pool, self._layout = None, layout

    def captured(self, tile_hw: tuple[int, int]) -> list[int]:
        """The buckets captured for tiles of ``tile_hw``, smallest first."""
        with self._lock:
            return sorted(b for b, *hw in self._graphs if tuple(hw) == tuple(tile_hw))

    def prepare(self, model, batch_sizes: Iterable[int], tile_hw: tuple[int, int]) -> None:
        """Capture the graphs for these batch sizes now (before the run's device work starts)."""
        with self._lock:
            for n in sorted({bucket_size(int(n)) for n in batch_sizes}, reverse=True):
                self._entry(model, n, tile_hw)

    def __call__(self, model, tiles):
        """The forward's outputs for ``tiles`` (on the device, or pinned host memory), or None when
        the graphs cannot be used (the caller then runs the model eagerly).

        Without a graph for their bucket, the tiles run padded in the smallest larger bucket
        captured, if any, rather than capturing one for them.
        """
        import torch

        n = len(tiles)
        with self._lock:
            entry = self._entry(model, n, tuple(tiles.shape[1:3]), reuse_larger=True)
            if entry is None:
                return None
            graph, static_in, static_out = entry
            stream = torch.cuda.current_stream(self.device)
            if self._replayed is not None:  # another thread's stream may still be replaying
                stream.wait_event(self._replayed)
            static_in[:n].copy_(tiles, non_blocking=True)
            graph.replay()
            outputs = tuple(out[:n].clone() for out in static_out)
            self._replayed = torch.cuda.Event()
            self._replayed.record(stream)
        return outputs

    def _entry(self, model, n: int, tile_hw: tuple[int, int], reuse_larger: bool = False):
        if self.failure is not None:
            return None
        key = (bucket_size(n), *tile_hw)
        if key not in self._graphs and reuse_larger:
            larger = [k for k in self._graphs if k[1:] == key[1:] and k[0] >= n]
            if larger:
                return self._graphs[min(larger)]
        if key not in self._graphs:
            self._drop_if_moved(_storage_layout(model))
            try:
                self._graphs[key] = self._capture(model, *key)
            except Exception as error:  # noqa: BLE001 - the model still runs eagerly
                self.failure = f"{type(error).__name__}: {error}"
                self._graphs.clear()
                logger.warning("CUDA graphs are off for this model: %s", self.failure)
                return None
        return self._graphs[key]

    def _capture(self, model, bucket: int, height: int, width: int):
        import torch

        static_in = torch.zeros((bucket, height, width, 3), dtype=torch.uint8, device=self.device)
        side = torch.cuda.Stream(self.device)  # warm-up off the current stream, as torch advises
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compiles kernels, picks cuBLAS/cuDNN algorithms
                self.forward(model, static_in, *self.constants)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the reader threads may use CUDA while this thread captures
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            static_out = self.forward(model, static_in, *self.constants)
        self._pool = graph.pool()
        return graph, static_in, static_out


def captured_buckets(model, settings: tuple, tile_hw: tuple[int, int]) -> list[int]:
    """The buckets captured so far for ``model`` and ``settings`` (see :func:`graphed_classifier`)."""
    graphs = _per_model.get(id(model), {}).get(settings)
    return graphs.captured(tile_hw) if graphs is not None else []


def graphed_classifier(model, settings: tuple, make: Callable[[], GraphedClassifier]):
    """The :class:`GraphedClassifier` kept for ``model`` and ``settings``, made by ``make()`` once."""
    key = id(model)
    if key not in _per_model:
        _per_model[key] = {}
        weakref.finalize(model, _per_model.pop, key, None)
    graphs = _per_model[key]
    if settings not in graphs:
        graphs[settings] = make()
    return graphs[settings]
