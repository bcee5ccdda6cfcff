"""The abstract slide: pyramid levels as lazy dask arrays, pixel size, vendor, associated images.

Coordinate frames: ``l0`` is level-0 pixels (what every geometry in the package uses), ``level``
is pixels of one pyramid level. Arrays are (y, x, channels); dimensions are (width, height) as in
OpenSlide. Backends supply a ``LevelReader`` per level stored in the file; the base class adds
reduced levels until the smallest side is at most ``MIN_OVERVIEW_SIDE``, so a viewer always gets a
pyramid.
"""

from __future__ import annotations

import abc
import math
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path

import numpy as np

from napari_ssmamba.errors import SlideError
from napari_ssmamba.slide.cache import TileCache
from napari_ssmamba.slide.properties import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP, plausible_mpp

#: reduced levels are added until the smallest side of the smallest level is at most this
MIN_OVERVIEW_SIDE = 1024
#: default bound on the decoded-tile cache of one slide
DEFAULT_CACHE_BYTES = 128 * 2**20
#: dask chunks are whole tiles of the file, grouped until a side reaches about this many px
TARGET_CHUNK_SIDE = 512


class LevelReader(abc.ABC):
    """One pyramid level as a random-access (y, x, c) array, read in that level's pixels.

    It has ``shape``, ``dtype``, ``ndim`` and ``__getitem__``, so ``dask.array.from_array`` wraps
    it directly; ``chunks`` follow the file's tile grid.
    """

    ndim = 3

    def __init__(self, shape: tuple[int, int, int], dtype: np.dtype, tile_hw: tuple[int, int]):
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        self.tile_hw = (max(1, int(tile_hw[0])), max(1, int(tile_hw[1])))

    @abc.abstractmethod
    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels [y:y+h, x:x+w] (level px, inside the level) as a (h, w, c) array."""

    @property
    def chunk_hw(self) -> tuple[int, int]:
        """Chunk size: a whole number of tiles, about TARGET_CHUNK_SIDE on each side."""
        return tuple(t * max(1, round(TARGET_CHUNK_SIDE / t)) if t < TARGET_CHUNK_SIDE else t
                     for t in self.tile_hw)

    @property
    def channel_chunks(self) -> int:
        """Channels per chunk: all of them, unless the file stores channels apart."""
        return self.shape[2]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        region = self.read(0, 0, self.shape[0], self.shape[1])
        return region if dtype is None else region.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        """Basic indexing (slices and integers) on (y, x, c); reads only the region asked for."""
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        spatial, drop = [], []
        for axis, (k, n) in enumerate(zip(key[:2], self.shape[:2])):
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of range for axis {axis} of size {n}")
                k, drop = slice(k, k + 1), [*drop, axis]
            spatial.append(k.indices(n))
        (y0, y1, ys), (x0, x1, xs) = spatial
        if ys < 0 or xs < 0:
            raise IndexError("negative steps are not supported")
        region = self.read(y0, x0, max(y1 - y0, 0), max(x1 - x0, 0))
        if ys != 1 or xs != 1:
            region = region[::ys, ::xs]
        region = region[:, :, key[2]]
        return region.squeeze(axis=tuple(drop)) if drop else region


class DownsampledLevel(LevelReader):
    """A level computed from another by 2x2 area means (the odd last row/column is dropped)."""

    def __init__(self, parent: LevelReader, cache: TileCache, name: Hashable):
        h, w, c = parent.shape
        super().__init__((h // 2, w // 2, c), parent.dtype, parent.chunk_hw)
        self.parent = parent
        self._cache = cache
        self._name = name

    @property
    def channel_chunks(self) -> int:
        return self.parent.channel_chunks

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        key = (self._name, y, x, h, w)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        block = self.parent.read(2 * y, 2 * x, 2 * h, 2 * w)
        c = block.shape[2]
        summed = block.reshape(h, 2, w, 2, c).sum(axis=(1, 3), dtype=np.float64)
        if np.issubdtype(self.dtype, np.integer):
            region = np.floor(summed / 4 + 0.5).astype(self.dtype)
        else:
            region = (summed / 4).astype(self.dtype)
        self._cache.put(key, region)
        return region



class LazyImages(Mapping):
    """Associated images read on first access."""

    def __init__(self, names: list[str], load: Callable[[str], np.ndarray]):
        self._names = list(names)
        self._load = load
        self._loaded: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def normalize_mpp(mpp: float | tuple[float, float] | None) -> tuple[float, float] | None:
    """An ``mpp=`` argument (one number or (mpp_y, mpp_x)) as a (y, x) tuple of floats."""
    if mpp is None:
        return None
    if np.isscalar(mpp):
        mpp = (mpp, mpp)
    mpp_y, mpp_x = (float(v) for v in mpp)
    if not (plausible_mpp(mpp_y) and plausible_mpp(mpp_x)):
        raise ValueError(
            f"mpp must be {MIN_PLAUSIBLE_MPP:g}-{MAX_PLAUSIBLE_MPP:g} µm per pixel, got {mpp!r} "
            "(whole-slide scans are 0.1-1 µm/px)"
        )
    return (mpp_y, mpp_x)


#: the ways to give a slide its pixel size, for messages
GIVE_MPP = (
    "Plugins > SSMamba WSI > Settings > Set MPP in napari, --mpp on the command line, or "
    "open_slide(path, mpp=(y, x)) in Python"
)


class Slide(abc.ABC):
    """A whole-slide image: a pyramid of (y, x, c) levels, level 0 at full resolution.

    Subclasses open the file and hand the base class one ``LevelReader`` per stored level.
    Slides are context managers; ``close()`` releases the file handles. ``pixel_reader`` names
    the library that decodes the pixels ("openslide" or "tifffile").
    """

    pixel_reader: str

    def __init__(
        self,
        path: Path,
        *,
        vendor: str,
        properties: Mapping[str, str],
        mpp: tuple[float, float] | None,
        readers: list[LevelReader],
        downsamples: list[float],
        is_rgb: bool,
        background: tuple[float, ...],
        associated: Mapping[str, np.ndarray] | None = None,
        channel_names: list[str] | None = None,
        channel_colors: list[tuple[int, int, int]] | None = None,
        cache: TileCache | None = None,
    ):
        self.path = Path(path)
        self.vendor = vendor
        self.properties: Mapping[str, str] = dict(properties)
        self.mpp = mpp
        self.is_rgb = is_rgb
        self.channel_names = channel_names
        self.channel_colors = channel_colors
        self.background = background
        self.associated: Mapping[str, np.ndarray] = associated if associated is not None else {}
        self._cache = cache if cache is not None else TileCache(DEFAULT_CACHE_BYTES)
        self._readers = list(readers)
        self._downsamples = [float(d) for d in downsamples]
        self.native_level_count = len(self._readers)
        while min(self._readers[-1].shape[:2]) > MIN_OVERVIEW_SIDE:
            self._readers.append(
                DownsampledLevel(self._readers[-1], self._cache, ("reduced", len(self._readers)))
            )
            self._downsamples.append(self._downsamples[-1] * 2)
        self._levels = None
        self._closed = False

    # --- geometry -------------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self._readers)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of each level, level 0 first."""
        return [(r.shape[1], r.shape[0]) for r in self._readers]

    @property
    def level_downsamples(self) -> list[float]:
        """Level-0 pixels per pixel of each level."""
        return list(self._downsamples)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def dtype(self) -> np.dtype:
        return self._readers[0].dtype

    @property
    def channel_count(self) -> int:
        return self._readers[0].shape[2]

    @property
    def tile_size(self) -> tuple[int, int]:
        """(height, width) of the file's tiles (or strips) at level 0."""
        return self._readers[0].tile_hw

    def require_mpp(self, needed_for: str, ways: str = GIVE_MPP) -> tuple[float, float]:
        """The (y, x) µm/px; without one, a SlideError saying what it is ``needed_for`` and the
        ``ways`` to give it."""
        if self.mpp is None:
            raise SlideError(
                f"{self.path}: the slide has no microns-per-pixel (MPP) in its metadata, so "
                f"{needed_for}. Give it one: {ways}."
            )
        return tuple(float(v) for v in self.mpp)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The lowest-resolution level whose downsample is at most ``downsample``."""
        best = 0
        for level, level_ds in enumerate(self._downsamples):
            if level_ds <= downsample * (1 + 1e-6):
                best = level
        return best

    # --- pixels ---------------------------------------------------------------------------
    @property
    def level_readers(self) -> list[LevelReader]:
        """The levels as random-access arrays whose slices are numpy arrays, level 0 first.

        The readers behind ``levels``, without dask's per-compute graph overhead (tens of ms on a
        large slide): what a viewer that slices the visible region should be given.
        """
        self._check_open()
        return list(self._readers)

    @property
    def levels(self) -> list:
        """The levels as lazy dask arrays (y, x, c), chunked on the file's tile grid."""
        self._check_open()
        if self._levels is None:
            import dask.array as da

            token = uuid.uuid4().hex
            self._levels = [
                da.from_array(
                    reader,
                    chunks=(*reader.chunk_hw, reader.channel_chunks),
                    name=f"slide-{self.path.name}-{token}-level{i}",
                    lock=False,
                    asarray=False,
                    fancy=False,
                    meta=np.empty((0, 0, 0), reader.dtype),
                )
                for i, reader in enumerate(self._readers)
            ]
        return self._levels

    def jpeg_tiles(self, level: int):
        """The level's tiles as JPEG streams (a ``JpegTiles``), or None when it is not stored so.

        For decoders that take whole streams in batches, such as nvJPEG on the GPU.
        """
        self._check_open()
        return getattr(self._readers[level], "jpeg_tiles", None)

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Read an (h, w, c) region of ``level`` whose top-left corner is (y, x) in level-0 px.

        Parts outside the slide are filled with the background (white for brightfield RGB,
        0 for fluorescence). Raises SlideError when the file cannot be decoded.
        """
        self._check_open()
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range: {self.path.name} has "
                             f"{self.level_count} levels")
        if h < 0 or w < 0:
            raise ValueError(f"negative region size h={h}, w={w}")
        downsample = self._downsamples[level]
        level_y, level_x = math.floor(y / downsample), math.floor(x / downsample)
        return self._read_padded(self._readers[level], level_y, level_x, int(h), int(w))

    def _read_padded(self, reader: LevelReader, y: int, x: int, h: int, w: int) -> np.ndarray:
        height, width, channels = reader.shape
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + h, height), min(x + w, width)
        if (y0, x0, y1, x1) == (y, x, y + h, x + w):
            return reader.read(y, x, h, w)
        out = np.empty((h, w, channels), reader.dtype)
        out[...] = np.asarray(self.background, dtype=reader.dtype)[:channels]
        if y1 > y0 and x1 > x0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = reader.read(y0, x0, y1 - y0, x1 - x0)
        return out

    def get_thumbnail(self, max_size: int | tuple[int, int] = 1024) -> np.ndarray:
        """The whole slide shrunk by area means so that neither side exceeds ``max_size``.

        ``max_size`` is one number or (width, height), as in OpenSlide.
        """
        max_w, max_h = (max_size, max_size) if np.isscalar(max_size) else max_size
        width, height = self.dimensions
        downsample = max(width / max_w, height / max_h, 1.0)
        level = self.best_level_for_downsample(downsample)
        level_w, level_h = self.level_dimensions[level]
        region = self._read_padded(self._readers[level], 0, 0, level_h, level_w)
        factor = math.ceil(max(level_w / max_w, level_h / max_h, 1.0))
        if factor == 1:
            return region
        h, w = level_h // factor * factor, level_w // factor * factor
        if region.dtype == np.uint8 and region.shape[2] in (1, 3, 4):
            from PIL import Image  # box means in C, 10x faster than numpy's

            pixels = np.ascontiguousarray(region[:h, :w])
            image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
            return np.asarray(image.reduce(factor)).reshape(h // factor, w // factor, -1)
        blocks = region[:h, :w].reshape(h // factor, factor, w // factor, factor, -1)
        return blocks.mean(axis=(1, 3)).round().astype(region.dtype)

    # --- life cycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Release file handles and cached tiles."""
        if not self._closed:
            self._closed = True
            self._close_backend()
            self._cache.clear()

    @abc.abstractmethod
    def _close_backend(self) -> None:
        """Close the backend's file handles."""

    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(f"{self.path}: the slide was closed; open it again with open_slide")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = "no mpp" if self.mpp is None else f"mpp=({self.mpp[0]:.4g}, {self.mpp[1]:.4g})"
        return (f"{type(self).__name__}({str(self.path)!r}, vendor={self.vendor!r}, "
                f"dimensions={self.dimensions}, levels={self.level_count}, {mpp})")
