"""Batched prediction over tile boxes: reader threads, pinned memory, normalisation on the device.

Reading and resampling run in a thread pool (OpenSlide and PIL release the GIL); a batching thread
stacks the tiles into uint8 batches (in pinned memory on CUDA) two batches ahead of the model. On
CUDA, slides stored as JPEG tiles are instead decoded in batches on the GPU
(:mod:`~napari_ssmamba.inference.jpeg_batches`), on a stream of their own, also two batches
ahead, while another thread plans the next batch on the host. Batches start small and double, so
the model starts early. Tiles are converted and normalised on the device, and results stay there
until the end, so the GPU is fed without waiting for copies back.
On CUDA the model runs under bf16 autocast, replayed from CUDA graphs captured while the first
batches are made (:mod:`~napari_ssmamba.inference.graphs`), for the few batch sizes every run uses
(:func:`schedule_buckets`); other batches run padded in those, so that no run after the first
captures again (:func:`warm_up_model` captures them before the first). A
``torch.cuda.OutOfMemoryError`` halves the batch size and retries the same tiles instead of failing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from napari_ssmamba.errors import BackendUnavailableError
from napari_ssmamba.progress import no_progress, raise_if_cancelled

logger = logging.getLogger(__name__)

#: side of the per-tile attention map kept for stitching (the model's map is pooled to this)
ATTENTION_SIZE = 16
CPU_BATCH_SIZE = 32
CUDA_BATCH_SIZE = 256
#: on CUDA the first batch has this many tiles and each next one CUDA_BATCH_GROWTH times as many
#: (in whole CUDA-graph buckets), up to the batch size: the model starts after a short read instead
#: of waiting for a whole batch
CUDA_FIRST_BATCH = 64
CUDA_BATCH_GROWTH = 2.0


@dataclass
class TilePredictions:
    """Model outputs for ``n`` tiles: probabilities (n, classes) and attention maps (n, a, a) or None.

    ``cuda_graphs`` says whether the model ran from CUDA graphs.
    """

    probabilities: np.ndarray
    attention: np.ndarray | None
    batch_size: int
    cuda_graphs: bool = False


def resolve_device(device: str = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Raises :class:`BackendUnavailableError` for a CUDA device this torch cannot reach, and for any
    other kind of device.
    """
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise BackendUnavailableError(
            f"device {device!r}: SSMamba runs on 'cpu' or 'cuda' ('cuda:N' for GPU N); choose "
            "one of those, or 'auto'."
        )
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            cause = (
                f"this PyTorch ({torch.__version__}) was built without CUDA"
                if torch.version.cuda is None
                else f"{count} CUDA device(s) are visible"
            )
            raise BackendUnavailableError(
                f"device {device!r} was asked for, but {cause}. Choose 'cpu' or 'auto', or install "
                "a CUDA build of torch on a machine with a GPU."
            )
    return resolved


class SlideTileReader:
    """Reads a level-0 box from a slide at the chosen level and resamples it to the model's tile size.

    Parts of a box outside the slide are white.
    """

    def __init__(self, slide, geometry):
        self.slide = slide
        self.geometry = geometry

    def __call__(self, box_l0) -> np.ndarray:
        from PIL import Image

        g = self.geometry
        x, y, w, h = (int(v) for v in box_l0)
        width, height = self.slide.dimensions
        ds = g.level_downsample
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, width), min(y + h, height)
        out_size = max(round(w / ds), 1)
        canvas = np.full((out_size, out_size, 3), 255, dtype=np.uint8)
        if x1 > x0 and y1 > y0:
            rh = max(round((y1 - y0) / ds), 1)
            rw = max(round((x1 - x0) / ds), 1)
            region = np.asarray(self.slide.read_region(g.level, y0, x0, rh, rw))
            region = _to_rgb(region)
            oy, ox = round((y0 - y) / ds), round((x0 - x) / ds)
            rh, rw = min(rh, out_size - oy), min(rw, out_size - ox)
            canvas[oy : oy + rh, ox : ox + rw] = region[:rh, :rw]
        if out_size != g.tile_size:
            canvas = np.asarray(
                Image.fromarray(canvas).resize(
                    (g.tile_size, g.tile_size), Image.Resampling.BILINEAR
                )
            )
        return canvas


def _to_rgb(region: np.ndarray) -> np.ndarray:
    """(h, w, c) uint8 -> (h, w, 3): alpha composited on white, grey repeated."""
    if region.ndim == 2:
        region = region[..., None]
    if region.shape[-1] == 4:
        alpha = region[..., 3:4].astype(np.float32) / 255.0
        rgb = region[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return rgb.round().astype(np.uint8)
    if region.shape[-1] == 1:
        return np.repeat(region, 3, axis=-1)
    return region[..., :3]


def default_batch_size(device) -> int:
    return CUDA_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError)


def _all_on(tensors, device) -> bool:
    import torch

    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return all(t.device == device for t in tensors)


def classify_tiles(model, tiles_uint8, mean, std, attention: bool):
    """(b, h, w, 3) uint8 tiles on the model's device -> (probabilities, attention maps) or
    (probabilities,): normalised on the device, bf16 autocast on CUDA."""
    import torch
    import torch.nn.functional as F

    x = tiles_uint8.permute(0, 3, 1, 2).float().div_(255.0)  # (b, 3, h, w)
    x = (x - mean) / std
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda, cache_enabled=False)
    with torch.inference_mode(), autocast:
        if not attention:
            return (model(x).float().softmax(dim=1),)
        logits, lpr = model.forward_with_lpr(x)  # one backbone pass gives both
        maps = F.adaptive_avg_pool2d(lpr.float().unsqueeze(1), ATTENTION_SIZE)[:, 0]
        return logits.float().softmax(dim=1), maps


@functools.lru_cache(maxsize=16)
def _normalisation(mean: tuple, std: tuple, device):
    """The (1, 3, 1, 1) mean and std tensors on ``device``, made once (each is a copy to it)."""
    import torch

    return tuple(
        torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (mean, std)
    )


def graph_settings(device, attention: bool, card) -> tuple:
    """What a model's CUDA graphs are kept under, besides the model."""
    return (str(device), attention, tuple(card.mean), tuple(card.std))


class TileClassifier:
    """The device half of prediction: uint8 tiles in, probabilities and attention maps out.

    On CUDA the forward pass is replayed from CUDA graphs (:mod:`~napari_ssmamba.inference.graphs`)
    unless ``cuda_graphs`` is False or a capture fails; then it runs eagerly.
    """

    def __init__(self, model, card, device, attention: bool = True, cuda_graphs: bool = True):
        from napari_ssmamba.inference.graphs import (
            GraphedClassifier,
            graphed_classifier,
            walk_model,
        )

        self.device = device
        tensors, training = walk_model(model)
        if not _all_on(tensors, device):  # model.to costs ~1 ms even when nothing moves
            model.to(device)
            tensors = walk_model(model)[0]
        if training:
            model.eval()
        self.model = model
        self.attention = attention
        self.mean, self.std = _normalisation(tuple(card.mean), tuple(card.std), device)
        self.graphs = None
        if cuda_graphs and device.type == "cuda":
            settings = graph_settings(device, attention, card)
            self.graphs = graphed_classifier(
                self.model,
                settings,
                lambda: GraphedClassifier(
                    functools.partial(classify_tiles, attention=attention),
                    device,
                    (self.mean.clone(), self.std.clone()),
                ),
            )
            self.graphs.follow(self.model, tensors)

    def prepare(self, batch_sizes, tile_hw) -> None:
        """Capture the CUDA graphs for these batch sizes now, not during the run."""
        if self.graphs is not None:
            self.graphs.prepare(self.model, batch_sizes, tile_hw)

    def __call__(self, tiles_uint8):
        """(b, h, w, 3) uint8 tiles -> probabilities (b, classes) and attention (b, a, a) or None.

        Results stay on the device, so that the next batch can be queued before they are copied back.
        """
        out = self.graphs(self.model, tiles_uint8) if self.graphs is not None else None
        if out is None:
            x = tiles_uint8.to(self.device, non_blocking=True)
            out = classify_tiles(self.model, x, self.mean, self.std, self.attention)
        return out[0], out[1] if self.attention else None


def warm_up_model(
    model, card, device: str = "auto", attention: bool = True, batch_size: int | None = None
) -> None:
    """Do what the first :func:`predict_tiles` on ``device`` in a process would do before its first
    batch: move ``model`` there and, on CUDA, capture its graphs for :func:`schedule_buckets`
    (several seconds the first time: the scan kernels compile, cuDNN plans the convolutions)."""
    torch_device = resolve_device(device)
    batch_size = int(batch_size or default_batch_size(torch_device))
    _set_up_classifier(model, card, torch_device, attention, True, _run_buckets(batch_size))


def _set_up_classifier(model, card, device, attention: bool, cuda_graphs: bool, buckets):
    """The :class:`TileClassifier` a run uses, its graphs for ``buckets`` captured, made with
    ``device`` current (a run's set-up happens on its planner thread)."""
    import torch

    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        classify = TileClassifier(model, card, device, attention, cuda_graphs)
        classify.prepare(buckets, (card.tile_size, card.tile_size))
    return classify


def run_batches(classify: Callable, tiles, batch_size: int):
    """Run ``classify`` over ``tiles`` (a uint8 tensor) in chunks; halve the chunk on CUDA OOM.

    Returns probabilities, attention (or None), both on the device, and the batch size that worked.
    """
    import torch

    probs, attention = [], []
    start = 0
    while start < len(tiles):
        chunk = tiles[start : start + batch_size]
        try:
            p, a = classify(chunk)
        except Exception as error:
            if not _is_oom(error) or batch_size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(batch_size // 2, 1)
            logger.warning("out of memory: retrying with batch size %d", batch_size)
            continue
        probs.append(p)
        if a is not None:
            attention.append(a)
        start += len(chunk)
    return torch.cat(probs), torch.cat(attention) if attention else None, batch_size


_reader_streams = {}


def _reader_stream(device):
    """One CUDA stream per device for making batches: the allocator reuses memory per stream.

    (A high-priority stream made no measurable difference on the H100:
    bench/results/decoders_priority_2026-11-23_h100_*.json.)
    """
    import torch

    if device not in _reader_streams:
        _reader_streams[device] = torch.cuda.Stream(device)
    return _reader_streams[device]


def batch_sizes(
    n: int, batch_size: int, first: int | None = None, growth: float = 2.0
) -> list[int]:
    """The sizes of the batches ``n`` tiles are read in: ``first`` (default ``batch_size``), then
    ``growth`` times more each time, rounded up to whole CUDA-graph buckets, up to ``batch_size``;
    the last one takes what is left."""
    sizes = []
    for size in _schedule(batch_size, first, growth):
        if sum(sizes) >= n:
            return sizes
        sizes.append(min(size, n - sum(sizes)))


def schedule_buckets(batch_size: int, first: int | None = None, growth: float = 2.0) -> list[int]:
    """The CUDA-graph buckets of the batch sizes a run starts with and grows to (64, 128, 256 by
    default on CUDA): captured once per model and process, they serve every run, each run's last
    batch padded into one of them (see :func:`predict_tiles`)."""
    from napari_ssmamba.inference.graphs import bucket_size

    buckets = []
    for size in _schedule(batch_size, first, growth):
        if bucket_size(size) in buckets:
            return buckets
        buckets.append(bucket_size(size))


def _run_buckets(batch_size: int) -> list[int]:
    """The buckets a CUDA run with ``batch_size`` captures (and :func:`warm_up_model` ahead of it)."""
    return schedule_buckets(batch_size, CUDA_FIRST_BATCH, CUDA_BATCH_GROWTH)


def _schedule(batch_size: int, first: int | None, growth: float):
    """Batch sizes without end: ``first``, then ``growth`` times more in whole buckets, up to
    ``batch_size``."""
    from napari_ssmamba.inference.graphs import BUCKET_STEP

    size = min(first or batch_size, batch_size)
    while True:
        yield size
        size = min(math.ceil(size * growth / BUCKET_STEP) * BUCKET_STEP, batch_size)


#: runs at once that plan and make their batches on long-lived threads (two each: starting two
#: threads per run adds about 0.3 ms each before the first batch); more runs start their own, as
#: a planner holding a shared thread could otherwise wait for ever for its batcher to get one
SHARED_RUNS = 8
_shared_runs = threading.BoundedSemaphore(SHARED_RUNS)


@functools.cache
def _shared_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2 * SHARED_RUNS, thread_name_prefix="tile-pipeline")


class _BatchReader:
    """Makes the batches of tiles on two threads, queued ``depth`` ahead of the model.

    ``read_tile`` is either a per-box reader (its tiles are read by a pool of ``num_readers``
    threads and stacked into pinned memory when ``pin``) or a batch reader such as
    :class:`~napari_ssmamba.inference.jpeg_batches.JpegBatchReader` (``batched=True``) whose
    batches are planned on the host (``read_tile.plan``) by one thread while another makes the
    previous plan's batch on the CUDA device (``read_tile.make``), on a stream of its own: the
    host work of one batch overlaps the decoding of the last. The first batch is planned and
    made in the caller's thread before anything else competes for the interpreter. The planner
    thread starts when that batch's decode does, which holds the caller but leaves the
    interpreter free: it first runs ``set_up()`` (its result or error in :attr:`set_up`; the
    caller sets the model up there, in the decode's time), then plans the next batches.
    """

    def __init__(
        self, read_tile, boxes_l0, sizes, num_readers, pin, device, batched, depth=2, set_up=None
    ):
        self._read_tile, self._pin, self._batched = read_tile, pin, batched
        self._stream = _reader_stream(device) if batched and device.type == "cuda" else None
        self._pool = (
            None
            if batched
            else ThreadPoolExecutor(max_workers=num_readers, thread_name_prefix="tile-reader")
        )
        self._plans = queue.Queue(maxsize=depth)
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        #: ``set_up()``'s result, once the planner thread has run it
        self.set_up = concurrent.futures.Future()
        starts = np.cumsum([0, *sizes])
        batches = [boxes_l0[a:b] for a, b in itertools.pairwise(starts)]
        first = self._plan(batches[0])
        self._shared = _shared_runs.acquire(blocking=False)
        self._threads = (
            _shared_threads()
            if self._shared
            else ThreadPoolExecutor(max_workers=2, thread_name_prefix="tile-pipeline-own")
        )
        self._tasks = []

        def start_planner():
            if not self._tasks:
                self._tasks.append(self._threads.submit(self._plan_all, batches[1:], set_up))

        try:
            if not batched:  # box by box: the reader threads let go of the interpreter at once
                start_planner()
            self._queue.put(self._make_batch(first, start_planner))
            start_planner()
        except BaseException:
            self.close()
            raise
        self._tasks.append(self._threads.submit(self._make_all))

    def _put(self, target, item) -> bool:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, source):
        while not self._stop.is_set():
            try:
                return source.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _plan(self, boxes):
        return self._read_tile.plan(boxes) if self._batched else boxes

    def _plan_all(self, batches, set_up) -> None:
        try:
            self.set_up.set_result(set_up() if set_up is not None else None)
        except BaseException as error:  # noqa: BLE001 (handed on to the caller, which raises it)
            self.set_up.set_exception(error)
            return
        try:
            for boxes in batches:
                if not self._put(self._plans, self._plan(boxes)):
                    return
            self._put(self._plans, None)
        except BaseException as error:  # noqa: BLE001 (handed on to the consumer, which raises it)
            self._put(self._plans, error)

    def _make_batch(self, plan, decoding=None):
        import torch

        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                batch = self._read_tile.make(plan, decoding)
                ready = torch.cuda.Event()
                ready.record(self._stream)
            return batch, ready
        if self._batched:
            return self._read_tile.make(plan, decoding), None
        tiles = list(self._pool.map(self._read_tile, plan))
        batch = torch.empty((len(tiles), *tiles[0].shape), dtype=torch.uint8, pin_memory=self._pin)
        np.stack(tiles, out=batch.numpy())
        return batch, None

    def _make_all(self) -> None:
        try:
            while (plan := self._get(self._plans)) is not None:
                if isinstance(plan, BaseException):
                    raise plan
                if not self._put(self._queue, self._make_batch(plan)):
                    return
            self._put(self._queue, None)
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
            self._put(self._queue, error)

    def __iter__(self):
        import torch

        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            batch, ready = item
            if ready is not None:  # made on the reader's stream: wait for it, keep its memory
                current = torch.cuda.current_stream(batch.device)
                current.wait_event(ready)
                batch.record_stream(current)
            yield batch

    def close(self) -> None:
        """Stop planning and making, and wait until neither runs."""
        self._stop.set()
        concurrent.futures.wait(self._tasks)
        if self._shared:
            self._shared = False
            _shared_runs.release()
        else:
            self._threads.shutdown()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def predict_tiles(
    read_tile: Callable[[Sequence[int]], np.ndarray],
    boxes_l0: np.ndarray,
    model,
    card,
    device: str = "auto",
    batch_size: int | None = None,
    attention: bool = True,
    num_readers: int | None = None,
    progress=None,
    cancel=None,
    batched: bool = False,
    cuda_graphs: bool = True,
) -> TilePredictions:
    """Class probabilities (and LPR attention maps) for every box, in the order given.

    ``read_tile(box)`` returns the (tile_size, tile_size, 3) uint8 tile of a level-0 box, e.g. a
    :class:`SlideTileReader`; with ``batched=True``, ``read_tile(boxes)`` returns the batch of
    tiles of those boxes as a uint8 tensor, e.g. a
    :class:`~napari_ssmamba.inference.jpeg_batches.JpegBatchReader`.
    ``progress(done, total, message)`` is called after each batch and ``cancel`` (a
    ``threading.Event``) is checked between batches; a cancelled run raises
    :class:`~napari_ssmamba.errors.CancelledError`. ``cuda_graphs=False`` runs the model eagerly
    on CUDA too.
    """
    import torch

    from napari_ssmamba.inference.graphs import captured_buckets, fit_to_buckets

    progress = progress or no_progress
    torch_device = resolve_device(device)
    batch_size = int(batch_size or default_batch_size(torch_device))
    n = len(boxes_l0)
    num_classes = len(card.class_names)
    if n == 0:
        empty_attention = np.zeros((0, ATTENTION_SIZE, ATTENTION_SIZE), np.float32)
        return TilePredictions(
            np.zeros((0, num_classes), np.float32),
            empty_attention if attention else None,
            batch_size,
        )
    num_readers = num_readers or min(16, os.cpu_count() or 1)
    on_cuda = torch_device.type == "cuda"
    sizes = batch_sizes(
        n, batch_size, CUDA_FIRST_BATCH if on_cuda else None, CUDA_BATCH_GROWTH if on_cuda else 2.0
    )
    tile_hw = (card.tile_size, card.tile_size)
    buckets = _run_buckets(batch_size)
    if on_cuda and cuda_graphs:
        # every batch runs in a graph of the schedule's buckets or one captured before: a run
        # captures at most those (once per model and process; warm_up_model does it ahead), a
        # batch of another size (the last) runs padded
        captured = captured_buckets(model, graph_settings(torch_device, attention, card), tile_hw)
        sizes = fit_to_buckets(sizes, {*captured, *buckets})

    def set_up() -> TileClassifier:  # on the planner thread, while the first batch decodes
        return _set_up_classifier(model, card, torch_device, attention, cuda_graphs, buckets)

    reader = _BatchReader(  # makes the first batch, then the next ones
        read_tile,
        boxes_l0,
        sizes,
        num_readers,
        pin=on_cuda,
        device=torch_device,
        batched=batched,
        set_up=set_up,
    )
    probs, maps = [], []
    done = 0
    progress(0, n, "Classifying tiles")
    try:
        classify = reader.set_up.result()
        for tiles in reader:
            raise_if_cancelled(cancel, "classification")
            p, a, batch_size = run_batches(classify, tiles, batch_size)
            probs.append(p)
            if a is not None:
                maps.append(a)
            done += len(tiles)
            progress(done, n, "Classifying tiles")
    finally:
        reader.close()
    return TilePredictions(
        torch.cat(probs).cpu().numpy().astype(np.float32),
        torch.cat(maps).cpu().numpy().astype(np.float32) if maps else None,
        batch_size,
        classify.graphs is not None and classify.graphs.failure is None,
    )
