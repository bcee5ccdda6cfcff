"""Model tiles cut from a slide level's own JPEG tiles, decoded in batches (nvJPEG or libjpeg).

Reading box by box through OpenSlide or tifffile decodes JPEG tiles again for every box that
touches them and resamples each box on the CPU; on a GPU host that, not the model, bounds
throughput. Here, for each batch of model tiles, the JPEG tiles they cover are read as compressed
bytes and decoded once: on the GPU by nvJPEG (:mod:`~napari_ssmamba.inference.nvjpeg`), or
by libjpeg-turbo in a pool of CPU threads and copied to the device without blocking. The model
tiles are then gathered from the decoded tiles on the device and resampled there when the level is
not at the model's resolution. JPEG tiles shared with the previous batch are not decoded again.

The boxes, padding and resampling rules are those of
:class:`~napari_ssmamba.inference.predict.SlideTileReader`: outside the slide is white, past the
level's edge is the slide's background. Only the JPEG decoders differ (IDCT and chroma upsampling
rounding); :meth:`JpegBatchReader.check` measures that difference on a tile of the slide, and
:func:`tile_reader_for` uses nvJPEG only when the difference is that small (libjpeg-turbo is the
codec the slide readers use themselves).
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from napari_ssmamba.errors import BackendUnavailableError, SlideError
from napari_ssmamba.inference.nvjpeg import CheckedStreams, decoder_for

logger = logging.getLogger(__name__)

#: largest mean |difference| (0-255 levels) between nvJPEG and the slide's own reader on the check
#: tile. The decoders round the IDCT and upsample chroma differently (0.4 on average on 4:2:0 tiles
#: of the benchmark slide, H100); a wrong colour space differs by about 50.
MAX_MEAN_DIFFERENCE = 10.0
#: the tile decoders :func:`tile_reader_for` chooses from
DECODERS = ("auto", "cpu", "nvjpeg", "libjpeg")
#: how :meth:`JpegBatchReader.make` gathers model tiles: "auto" is Triton on CUDA where it imports
GATHERS = ("auto", "triton", "torch")
#: threads of the libjpeg decoder
DECODER_THREADS = min(16, os.cpu_count() or 1)


class NvJpegDecode:
    """``decode(streams, out)``: JPEG streams decoded into ``out``, an (n, h, w, 3) uint8 tensor
    on ``device``, with nvJPEG (:mod:`~napari_ssmamba.inference.nvjpeg`) on the current CUDA
    stream, without waiting for it. ``check(streams, (h, w))`` checks their headers ahead, when
    the batch is planned, so that the decode does not.

    Raises ValueError for RGB-coded streams (as in Aperio SVS): nvJPEG converts every
    three-component JPEG from YCbCr, also with an Adobe RGB marker or unchanged output (both
    tried on the H100: 50 levels off). Raises BackendUnavailableError when libnvjpeg is missing.
    """

    def __init__(self, colorspace: str, device):
        if colorspace != "YCbCr":
            raise ValueError("nvJPEG decodes YCbCr JPEG tiles only; these hold R, G, B components")
        self._decoder = decoder_for(device)

    def check(self, streams: list[bytes], tile_hw: tuple[int, int]):
        return self._decoder.check(streams, *tile_hw)

    def __call__(self, streams, out, starting: Callable[[], None] | None = None) -> None:
        """Decode; ``starting()``, if given, just before nvJPEG's call holds this thread."""
        import torch

        self._decoder.decode_into(streams, out, torch.cuda.current_stream(out.device), starting)


@functools.cache
def _decoder_pool() -> ThreadPoolExecutor:
    """The libjpeg decoders' threads, shared by every reader of the process."""
    return ThreadPoolExecutor(DECODER_THREADS, "jpeg-decoder")


def libjpeg_decoder(colorspace: str) -> Callable:
    """A function ``decode(streams, out)`` decoding JPEG streams into ``out``, an (n, h, w, 3) uint8
    tensor, with libjpeg-turbo (imagecodecs) on the CPU.

    Tiles are decoded by a pool of :data:`DECODER_THREADS` threads (the codec releases the
    interpreter). For a CUDA ``out`` they go into pinned memory first and are copied on the current
    stream without blocking: the copy engine moves them while the GPU computes. Any JPEG colour
    space libjpeg reads is accepted (RGB-coded Aperio tiles too).
    """
    import imagecodecs
    import torch

    pool = _decoder_pool()

    def decode(streams: list[bytes], out) -> None:
        host = torch.empty(out.shape, dtype=torch.uint8, pin_memory=True) if out.is_cuda else out
        array = host.numpy()

        def decode_one(i):
            try:
                imagecodecs.jpeg8_decode(
                    streams[i], colorspace=colorspace.upper(), outcolorspace="RGB", out=array[i]
                )
            except imagecodecs.Jpeg8Error as error:  # a corrupt tile: the caller names the slide
                raise ValueError(f"a tile does not decode ({error})") from error

        list(pool.map(decode_one, range(len(streams))))
        if out.is_cuda:
            out.copy_(host, non_blocking=True)

    return decode


def _to_device(array: np.ndarray, device):
    """``array`` on ``device`` without making the host wait: through pinned memory on CUDA."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


#: codes in _axis_sources' output for pixels without a level pixel
WHITE = -1
BACKGROUND = -2


def _axis_sources(start, size_l0, slide_len, level_len, downsample):
    """Per output pixel along one axis: the level pixel to take, or WHITE / BACKGROUND.

    ``start`` holds the boxes' level-0 starts, all of length ``size_l0``. Mirrors
    ``SlideTileReader``: the box is clipped to the slide, read from level pixel
    ``floor(clipped_start / downsample)``, pasted at ``round((clipped_start - start) / downsample)``
    into a white canvas of ``round(size_l0 / downsample)`` px, and pixels past the level's end
    are the background.
    """
    start = np.asarray(start, dtype=np.int64)
    out_size = max(round(size_l0 / downsample), 1)
    clipped0 = np.maximum(start, 0)
    clipped1 = np.minimum(start + size_l0, slide_len)
    # np.round rounds half to even, as Python's round does in SlideTileReader
    length = np.maximum(np.round((clipped1 - clipped0) / downsample), 1).astype(np.int64)
    offset = np.round((clipped0 - start) / downsample).astype(np.int64)
    length = np.minimum(length, out_size - offset)
    first = np.floor(clipped0 / downsample).astype(np.int64)
    v = np.arange(out_size)[None, :]
    source = first[:, None] + v - offset[:, None]
    source = np.where(source < level_len, source, BACKGROUND)
    inside = (
        (v >= offset[:, None]) & (v < (offset + length)[:, None]) & (clipped1 > clipped0)[:, None]
    )
    return np.where(inside, source, WHITE).astype(np.int64), out_size


def _cell_spans(source: np.ndarray, tile_len: int):
    """Per row of ``source`` ((n, out) level pixels, negative: no pixel): its first and last JPEG
    grid cell, and whether it has a pixel at all."""
    valid = source >= 0
    low = np.where(valid, source, np.iinfo(np.int64).max).min(axis=1) // tile_len
    high = np.where(valid, source, -1).max(axis=1) // tile_len
    return low, high, valid.any(axis=1)


def _cells_covered(row_spans, col_spans, grid_w: int) -> np.ndarray:
    """Sorted grid keys (row * grid_w + col) of the JPEG tiles that the boxes' pixels fall in,
    from the boxes' row and column :func:`_cell_spans`."""
    (r0, r1, r_ok), (c0, c1, c_ok) = row_spans, col_spans
    k_r = np.arange(int((r1 - r0).max(initial=0)) + 1)[None, :, None]
    k_c = np.arange(int((c1 - c0).max(initial=0)) + 1)[None, None, :]
    keys = (r0[:, None, None] + k_r) * grid_w + (c0[:, None, None] + k_c)
    inside = (
        (k_r <= (r1 - r0)[:, None, None])
        & (k_c <= (c1 - c0)[:, None, None])
        & (r_ok & c_ok)[:, None, None]
    )
    return np.unique(keys[inside])


class JpegBatchReader:
    """Batches of model tiles (uint8, (b, tile, tile, 3), on ``device``) for level-0 boxes.

    ``decode(streams, out)`` decodes a list of JPEG streams into ``out``, an (n, h, w, 3) uint8
    tensor on ``device``: "nvjpeg" (:class:`NvJpegDecode`, the default), "libjpeg"
    (:func:`libjpeg_decoder`) or a function. On CUDA the work is enqueued on the current stream and
    the batch is ready when that stream is. The model tiles are then gathered from the decoded
    tiles by one Triton kernel on CUDA (:mod:`~napari_ssmamba.inference.triton_gather`), else
    with torch indexing (``gather``: "auto", "triton", "torch"). :meth:`plan` and :meth:`make`
    split a batch into its host and device halves. Raises ValueError when the level the geometry
    reads is not stored as JPEG tiles, or nvJPEG is asked to decode RGB-coded JPEG.
    """

    def __init__(
        self, slide, geometry, device, decode: Callable | str = "nvjpeg", gather: str = "auto"
    ):
        import torch

        self.slide = slide
        self.geometry = geometry
        self.device = torch.device(device)
        self.jpeg = slide.jpeg_tiles(geometry.level)
        if self.jpeg is None:
            raise ValueError(
                f"{slide.path}: level {geometry.level} is not stored as JPEG tiles; read it "
                "with SlideTileReader"
            )
        #: the decoder's name, for run records
        self.decoder = decode if isinstance(decode, str) else "custom"
        if decode == "nvjpeg":
            decode = NvJpegDecode(self.jpeg.colorspace, self.device)
        elif decode == "libjpeg":
            decode = libjpeg_decoder(self.jpeg.colorspace)
        elif isinstance(decode, str):
            raise ValueError(f"decode must be 'nvjpeg', 'libjpeg' or a function, not {decode!r}")
        self.decode = decode
        self._gather = _gatherer(gather, self.device)
        #: how tiles are gathered from the decoded JPEG tiles: "triton" or "torch"
        self.gather = "torch" if self._gather is gather_with_torch else "triton"
        background = np.asarray(slide.background, dtype=np.uint8)[:3]
        self._constants = torch.tensor(
            np.stack([np.full(3, 255, np.uint8), background]), device=self.device
        )
        self._planned_keys = np.zeros(0, dtype=np.int64)  # keys of the last plan, in buffer order
        self._decoded = None  # the last batch's decoded JPEG tiles

    def check(self, row: int | None = None, col: int | None = None) -> float:
        """Mean |difference| between this reader's decoder and the slide's reader on one tile.

        The tile is (row, col) of the level's grid, or the stored tile nearest the grid's centre.
        """
        import torch

        if row is None or col is None:
            rows, cols = np.nonzero(self.jpeg.stored)
            if not len(rows):
                return 0.0
            grid_h, grid_w = self.jpeg.grid_hw
            nearest = np.argmin((rows - grid_h / 2) ** 2 + (cols - grid_w / 2) ** 2)
            row, col = int(rows[nearest]), int(cols[nearest])
        tile_h, tile_w = self.jpeg.tile_hw
        y, x = row * tile_h, col * tile_w
        h = min(tile_h, self.jpeg.shape_hw[0] - y)
        w = min(tile_w, self.jpeg.shape_hw[1] - x)
        expected = self.slide.level_readers[self.geometry.level].read(y, x, h, w)
        decoded = torch.empty((1, tile_h, tile_w, 3), dtype=torch.uint8, device=self.device)
        self.decode([self.jpeg.stream(row, col)], decoded)
        got = decoded[0, :h, :w].cpu().numpy().astype(np.int16)
        return float(np.abs(got - expected).mean())

    def __call__(self, boxes_l0):
        """The (b, tile, tile, 3) uint8 tiles of the level-0 boxes ``(minx, miny, width, height)``."""
        return self.make(self.plan(boxes_l0))

    def reset(self) -> None:
        """Forget the decoded tiles kept from the last batch (the next batch decodes all it needs)."""
        self._planned_keys = np.zeros(0, dtype=np.int64)

    def plan(self, boxes_l0) -> _BatchPlan:
        """The host half of a batch: which JPEG tiles to decode (their bytes read), which to keep
        from the previous plan's batch, and where each output pixel comes from. No CUDA calls, so
        it can run while another thread captures CUDA graphs; plans must be made in the order
        their batches are."""
        g = self.geometry
        boxes = np.asarray(boxes_l0, dtype=np.int64).reshape(-1, 4)
        width, height = (int(v) for v in self.slide.dimensions)
        level_h, level_w = self.jpeg.shape_hw
        tile_h, tile_w = self.jpeg.tile_hw
        grid_h, grid_w = self.jpeg.grid_hw
        # boxes share their rows' and columns' starts: work out each start once
        ys, y_of_box = np.unique(boxes[:, 1], return_inverse=True)
        xs, x_of_box = np.unique(boxes[:, 0], return_inverse=True)
        rows, out_size = _axis_sources(ys, g.tile_l0, height, level_h, g.level_downsample)
        cols, _ = _axis_sources(xs, g.tile_l0, width, level_w, g.level_downsample)
        keys = _cells_covered(
            [a[y_of_box] for a in _cell_spans(rows, tile_h)],
            [a[x_of_box] for a in _cell_spans(cols, tile_w)],
            grid_w,
        )
        keys = keys[self.jpeg.stored.ravel()[keys]] if len(keys) else keys
        # tiles the last batch decoded are copied from its buffer; the others are decoded into
        # the start of the new one
        previous = self._planned_keys
        reused = np.isin(keys, previous)
        missing, kept = keys[~reused], keys[reused]
        order = np.concatenate([missing, kept])
        sorter = np.argsort(previous)
        kept_from = sorter[np.searchsorted(previous, kept, sorter=sorter)]
        streams = [self.jpeg.stream(*divmod(int(k), grid_w)) for k in missing]
        if isinstance(self.decode, NvJpegDecode):
            try:
                streams = self.decode.check(streams, self.jpeg.tile_hw)
            except ValueError as error:
                raise self._undecodable(error) from error
        self._planned_keys = order

        # slot of each (grid row, grid col): its place in the decoded buffer; grid row (col)
        # grid_h (grid_w) stands for WHITE, grid_h + 1 (grid_w + 1) for BACKGROUND; white wins
        # over background, and tiles not stored are white
        white, background = len(order), len(order) + 1
        slot = np.full((grid_h + 2, grid_w + 2), white, dtype=np.int32)
        slot[order // grid_w, order % grid_w] = np.arange(len(order))
        slot[grid_h + 1, :] = slot[:, grid_w + 1] = background
        slot[grid_h, :] = slot[:, grid_w] = white

        # per box and output row (column): grid row (column) and the row (column) inside its
        # JPEG tile; WHITE -> grid_len, BACKGROUND -> grid_len + 1
        axes = np.empty((4, len(boxes), out_size), dtype=np.int32)
        for i, (source, of_box, tile_len, grid_len) in enumerate(
            ((rows, y_of_box, tile_h, grid_h), (cols, x_of_box, tile_w, grid_w))
        ):
            cell, offset = np.divmod(source, tile_len)
            valid = source >= 0
            axes[2 * i] = np.where(valid, cell, grid_len - 1 - source)[of_box]
            axes[2 * i + 1] = np.where(valid, offset, 0)[of_box]
        # each part starts on 16 bytes, as Triton specialises its kernels for aligned pointers:
        # the gather is compiled once, not again for each alignment the parts happen to have
        parts = [kept_from.astype(np.int32), slot.ravel(), axes.ravel()]
        starts = np.cumsum([0] + [-(-len(part) // 4) * 4 for part in parts])
        indices = np.zeros(starts[-1], dtype=np.int32)
        for part, start in zip(parts, starts, strict=False):
            indices[start : start + len(part)] = part
        return _BatchPlan(
            streams, len(kept_from), indices, int(starts[1]), int(starts[2]), len(boxes), out_size
        )

    def make(self, plan: _BatchPlan, decoding: Callable[[], None] | None = None):
        """The device half of a batch: decode, gather and resample its tiles (on CUDA, enqueued on
        the current stream).

        ``decoding()``, if given, is called as the decode starts: the decode holds this thread
        (nvJPEG's call returns when its tiles are nearly done) but not the interpreter, so other
        threads can then run without slowing this batch down.
        """
        import torch
        import torch.nn.functional as F

        g = self.geometry
        tile_h, tile_w = self.jpeg.tile_hw
        grid_h, grid_w = self.jpeg.grid_hw
        missing, count = len(plan.streams), len(plan.streams) + plan.kept
        decoded = torch.empty((count + 2, tile_h, tile_w, 3), dtype=torch.uint8, device=self.device)
        decoded[count:] = self._constants[:, None, None, :]
        # one copy for the batch's index arrays (built by the planner thread: on the device they
        # would take a score of small kernels per batch, each queued behind the model's)
        indices = _to_device(plan.indices, self.device)
        if plan.kept:
            decoded[missing:count] = self._decoded[indices[: plan.kept]]
        if missing:
            try:
                self._decode(plan.streams, decoded[:missing], decoding)
            except ValueError as error:
                raise self._undecodable(error) from error
        elif decoding is not None:
            decoding()
        self._decoded = decoded
        slot_size, axes_size = (grid_h + 2) * (grid_w + 2), 4 * plan.boxes * plan.out_size
        slot = indices[plan.slot_start : plan.slot_start + slot_size].view(grid_h + 2, grid_w + 2)
        axes = indices[plan.axes_start : plan.axes_start + axes_size]
        axes = axes.view(4, plan.boxes, plan.out_size)
        tiles = self._gather(decoded, slot, axes)
        if plan.out_size != g.tile_size:
            tiles = F.interpolate(
                tiles.permute(0, 3, 1, 2).float(),
                size=(g.tile_size, g.tile_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            tiles = tiles.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return tiles.contiguous()

    def _decode(self, streams, out, decoding: Callable[[], None] | None) -> None:
        """``self.decode(streams, out)``, calling ``decoding()`` as late as the decoder allows:
        nvJPEG's right before its call, which holds this thread."""
        if isinstance(self.decode, NvJpegDecode):
            self.decode(streams, out, decoding)
            return
        if decoding is not None:
            decoding()
        self.decode(streams, out)

    def _undecodable(self, error: ValueError) -> SlideError:
        tile_h, tile_w = self.jpeg.tile_hw
        return SlideError(
            f"{self.slide.path}: cannot decode the JPEG tiles of level {self.geometry.level} as "
            f"{tile_h} x {tile_w} RGB: {error}"
        )


def gather_with_torch(decoded, slot, axes):
    """:func:`~napari_ssmamba.inference.triton_gather.gather_tiles` with torch indexing, on any
    device."""
    row_cell, row_offset, col_cell, col_offset = axes.long()
    _, tile_h, tile_w, _ = decoded.shape
    slots = slot.long()[row_cell[:, :, None], col_cell[:, None, :]]
    flat = (slots * tile_h + row_offset[:, :, None]) * tile_w + col_offset[:, None, :]
    return decoded.view(-1, 3)[flat]


def _gatherer(gather: str, device) -> Callable:
    """The gather function for ``gather`` ("auto", "triton" or "torch") on ``device``."""
    if gather not in GATHERS:
        raise ValueError(f"gather must be one of {', '.join(GATHERS)}, not {gather!r}")
    if gather == "torch" or (gather == "auto" and device.type != "cuda"):
        return gather_with_torch
    if device.type != "cuda":
        reason = f"it runs on CUDA devices, not {device}"
    else:
        try:
            from napari_ssmamba.inference.triton_gather import gather_tiles

            return gather_tiles
        except ImportError as error:  # no Triton
            reason = str(error)
    if gather == "triton":
        raise BackendUnavailableError(f"cannot gather tiles with Triton: {reason}")
    return gather_with_torch


@dataclass
class _BatchPlan:
    """What :meth:`JpegBatchReader.make` needs for one batch: JPEG bytes and one int32 array."""

    # JPEG tiles to decode, in the decoded buffer's order: for nvJPEG, checked ahead (CheckedStreams)
    streams: list[bytes] | CheckedStreams
    kept: int  # tiles kept from the last buffer, placed after the decoded ones
    # int32: the places of the kept tiles in the last buffer (kept), the slot table
    # ((grid_h + 2) * (grid_w + 2)) from slot_start and the axes (4 * boxes * out_size) from
    # axes_start, see make
    indices: np.ndarray
    slot_start: int
    axes_start: int
    boxes: int
    out_size: int  # side of the tiles before resampling to the model's size


#: per slide: {(level, device): why nvJPEG cannot be used there, or None when it can}
_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tile_reader_for(slide, geometry, device, decoder: str = "auto"):
    """The tile reader ``predict_tiles`` should use: batched nvJPEG or libjpeg where they apply.

    ``decoder``:

    - "auto": on CUDA, nvJPEG when libnvjpeg is installed, the level is stored as YCbCr JPEG
      tiles and nvJPEG gives the slide reader's pixels on the check tile (checked once per slide,
      level and device); else libjpeg when the level is stored as JPEG tiles (Aperio's RGB-coded
      ones too); else the CPU reader. On the CPU: the CPU reader.
    - "cpu": :class:`SlideTileReader`, box by box in reader threads.
    - "nvjpeg" or "libjpeg": that decoder, or BackendUnavailableError with the reason.
    """
    import torch

    from napari_ssmamba.inference.predict import SlideTileReader

    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    device = torch.device(device)
    if decoder == "cpu" or (decoder == "auto" and device.type != "cuda"):
        return SlideTileReader(slide, geometry)
    if decoder in ("auto", "nvjpeg"):
        if device.type != "cuda":
            reason = f"nvJPEG decodes on CUDA devices, not {device}"
        else:
            checked = _checked.setdefault(slide, {})
            if (geometry.level, device) not in checked:
                checked[geometry.level, device] = _why_not_nvjpeg(slide, geometry, device)
            reason = checked[geometry.level, device]
            if reason is None:
                return JpegBatchReader(slide, geometry, device, "nvjpeg")
        if decoder == "nvjpeg":
            raise BackendUnavailableError(
                f"{slide.path}: cannot decode tiles with nvJPEG: {reason}. Use decoder 'auto' "
                "(nvJPEG where it can be used, else libjpeg or the CPU reader) or 'cpu'."
            )
        logger.info("%s: not decoding tiles with nvJPEG: %s", slide.path, reason)
    if slide.jpeg_tiles(geometry.level) is not None:
        return JpegBatchReader(slide, geometry, device, "libjpeg")
    if decoder == "libjpeg":
        raise BackendUnavailableError(
            f"{slide.path}: level {geometry.level} is not stored as JPEG tiles, so libjpeg cannot "
            "decode them in batches. Use decoder 'auto' or 'cpu'."
        )
    return SlideTileReader(slide, geometry)


def _why_not_nvjpeg(slide, geometry, device) -> str | None:
    """None when nvJPEG reads this level with the slide reader's pixels, else the reason."""
    try:
        difference = JpegBatchReader(slide, geometry, device, "nvjpeg").check()
    except (ImportError, ValueError) as error:  # no libnvjpeg; not YCbCr JPEG tiles
        return str(error)
    except Exception as error:  # noqa: BLE001 - a decoder failure is a reason to use the CPU
        return f"nvJPEG failed on the check tile ({type(error).__name__}: {error})"
    logger.info("%s: nvJPEG differs by %.2f levels on the check tile", slide.path, difference)
    if difference > MAX_MEAN_DIFFERENCE:
        return f"nvJPEG's pixels differ from the slide reader's by {difference:.1f} levels"
    return None
