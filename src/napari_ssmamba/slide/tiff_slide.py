"""Slides read with tifffile: OME-TIFF, PerkinElmer/Akoya QPTIFF (multiplexed, with channel
names), plain tiled or striped TIFF, and pyramids stored as pages or SubIFDs.

Pixels are read segment by segment (tile or strip): the bytes come from ``os.pread`` on a file
descriptor of our own (safe from any number of threads at once), tifffile's per-page decoder turns
them into arrays, and decoded segments live in the slide's bounded tile cache.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ssmamba.errors import SlideError
from napari_ssmamba.slide.cache import TileCache
from napari_ssmamba.slide.properties import (
    PROPERTY_MPP_X,
    PROPERTY_MPP_Y,
    PROPERTY_OBJECTIVE_POWER,
    PROPERTY_VENDOR,
    mpp_from_aperio_description,
    mpp_from_ome_xml,
    mpp_from_tiff_resolution,
    parse_color,
    parse_qptiff_description,
    plausible_mpp,
)
from napari_ssmamba.slide.slide import (
    DEFAULT_CACHE_BYTES,
    LazyImages,
    LevelReader,
    Slide,
    normalize_mpp,
)

#: strip-based images wider than this are chunked in columns of STRIP_CHUNK_WIDTH
_STRIP_CHUNK_WIDTH = 2048
_JPEG_COMPRESSIONS = {6, 7, 34892, 33007}
_ASSOCIATED_SERIES = {"thumbnail": "thumbnail", "label": "label", "macro": "macro"}
_QPTIFF_ASSOCIATED = {"Thumbnail": "thumbnail", "Overview": "macro", "Label": "label"}


def _jpeg_tables(page) -> bytes | None:
    """The JPEG tables of a page (a TiffFrame has none of its own: its keyframe's)."""
    return getattr(page, "jpegtables", None) or page.keyframe.jpegtables


def _is_plain_tiled_rgb8(page) -> bool:
    """True for a tiled page of interleaved 8-bit RGB or YCbCr samples (any compression)."""
    return bool(
        page.is_tiled
        and page.samplesperpixel == 3
        and page.planarconfig == 1
        and page.dtype == np.uint8
        and int(page.photometric) in (2, 6)
    )


def _cannot_decode_hint() -> str:
    """Why a segment may not decode: imagecodecs missing, or the file itself."""
    try:
        import imagecodecs
    except ImportError:
        return (
            "The file is corrupt, or uses a compression that needs imagecodecs "
            "(pip install imagecodecs)."
        )
    return (
        f"The file is corrupt, or uses a compression that imagecodecs {imagecodecs.__version__} "
        "cannot decode."
    )


class _ByteReader:
    """Positional reads from one file, safe across threads."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = None if hasattr(os, "pread") else threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        fd = self._fd
        if fd is None:  # never read a closed descriptor: its number may belong to another file
            raise OSError("the slide was closed")
        if self._lock is None:
            return os.pread(fd, size, offset)
        with self._lock:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, size)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class JpegTiles:
    """The JPEG tiles of one pyramid level as whole JPEG streams, for batch decoders (nvJPEG).

    ``colorspace`` is what the three JPEG components hold: "YCbCr" (decode to RGB as usual) or
    "RGB" (as in Aperio SVS: the components are R, G, B; decode without colour conversion).
    Tiles at the right and bottom edges are stored full size; their pixels past the level's edge
    are padding.
    """

    def __init__(self, path: Path, level: int, page, shape_hw: tuple[int, int],
                 reader: _ByteReader):
        self.path = path
        self.level = level
        self.shape_hw = shape_hw
        self.tile_hw = (int(page.tilelength), int(page.tilewidth))
        self.grid_hw = (math.ceil(shape_hw[0] / self.tile_hw[0]),
                        math.ceil(shape_hw[1] / self.tile_hw[1]))
        # as tifffile decides: RGB photometric without a JFIF marker means RGB components
        rgb = int(page.photometric) == 2 and not page.keyframe.is_jfif
        self.colorspace = "RGB" if rgb else "YCbCr"
        self._offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self._sizes = np.asarray(page.databytecounts, dtype=np.int64)
        tables = _jpeg_tables(page)
        # abbreviated streams: the tables (without their end marker) go before the tile's
        # frame (without its start marker)
        self._tables = bytes(tables[:-2]) if tables else None
        self._reader = reader

    @functools.cached_property
    def stored(self) -> np.ndarray:
        """(rows, cols) bool: False for tiles the file does not store (readers show them white).

        Worked out once: every batch plan of the JPEG batch reader looks it up."""
        count = self.grid_hw[0] * self.grid_hw[1]
        return ((self._offsets[:count] > 0) & (self._sizes[:count] > 0)).reshape(self.grid_hw)

    def stream(self, row: int, col: int) -> bytes:
        """The complete JPEG stream of tile (row, col); raises SlideError if it cannot be read."""
        index = row * self.grid_hw[1] + col
        try:
            data = self._reader.read(int(self._offsets[index]), int(self._sizes[index]))
        except OSError as exc:
            raise SlideError(f"{self.path}: cannot read tile {index} of level {self.level}: "
                             f"{exc}") from exc
        return self._tables + data[2:] if self._tables else data


@dataclass
class _Plane:
    """Segments of one page holding ``channels`` channels of a level (one sample plane)."""

    page: object  # tifffile TiffPage or TiffFrame
    channels: int
    segment_base: int  # index of the first segment of this sample plane in the page's offsets


class _TiffLevel(LevelReader):
    """One pyramid level made of one or more pages (planes of channels), read by segment."""

    def __init__(self, slide_path: Path, index: int, planes: list[_Plane], shape, dtype,
                 fill: float, reader: _ByteReader, cache: TileCache):
        keyframe = planes[0].page.keyframe
        self._tiled = bool(keyframe.is_tiled)
        tile_hw = (keyframe.tilelength, keyframe.tilewidth) if self._tiled else (
            min(keyframe.rowsperstrip, shape[0]), shape[1])
        super().__init__(shape, dtype, tile_hw)
        self._path = slide_path
        self._index = index
        self._planes = planes
        self._fill = fill
        self._reader = reader
        self._cache = cache
        self._grid_w = math.ceil(shape[1] / self.tile_hw[1])

    @property
    def chunk_hw(self) -> tuple[int, int]:
        chunk_h, chunk_w = super().chunk_hw
        if not self._tiled and chunk_w > 2 * _STRIP_CHUNK_WIDTH:
            chunk_w = _STRIP_CHUNK_WIDTH
        return chunk_h, chunk_w

    @property
    def plane_count(self) -> int:
        return len(self._planes)

    @property
    def channel_chunks(self) -> int:
        # channels in separate pages are read apart, so a viewer showing one decodes one
        return self._planes[0].channels if len(self._planes) > 1 else self.shape[2]

    @functools.cached_property
    def jpeg_tiles(self) -> JpegTiles | None:
        """This level's tiles as JPEG streams when it is one tiled 8-bit RGB JPEG page, else None."""
        page = self._planes[0].page
        keyframe = page.keyframe
        if (
            len(self._planes) != 1
            or keyframe.compression != 7
            or not _is_plain_tiled_rgb8(keyframe)
        ):
            return None
        return JpegTiles(self._path, self._index, page, self.shape[:2], self._reader)

    def segment(self, plane_index: int, row: int, col: int) -> np.ndarray:
        """The decoded segment (tile or strip) at grid (row, col) of a plane, (h, w, channels)."""
        key = (self._index, plane_index, row, col)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        plane = self._planes[plane_index]
        page = plane.page
        keyframe = page.keyframe
        index = plane.segment_base + row * self._grid_w + col
        offset, size = int(page.dataoffsets[index]), int(page.databytecounts[index])
        tile_h, tile_w = self.tile_hw
        kind = "tile" if self._tiled else "strip"
        try:
            data = self._reader.read(offset, size) if offset and size else None
        except OSError as exc:
            raise SlideError(f"{self._path}: cannot read {kind} {index} of level {self._index}: "
                             f"{exc}") from exc
        if data is None:
            segment = None
        else:
            kwargs = {"_fullsize": self._tiled}
            if keyframe.compression in _JPEG_COMPRESSIONS:
                kwargs["jpegtables"] = _jpeg_tables(page)
                kwargs["jpegheader"] = keyframe.jpegheader
            try:
                segment, _, _ = keyframe.decode(data, index, **kwargs)
            except Exception as exc:  # codecs raise their own types: report them all alike
                raise SlideError(
                    f"{self._path}: cannot decode {kind} {index} of level {self._index} "
                    f"({type(exc).__name__}: {exc}). {_cannot_decode_hint()}"
                ) from exc
        rows = min(tile_h, self.shape[0] - row * tile_h) if not self._tiled else tile_h
        if segment is None:
            segment = np.full((rows, tile_w, plane.channels), self._fill, self.dtype)
        else:
            segment = segment.reshape(segment.shape[-3], segment.shape[-2], -1)
        self._cache.put(key, segment)
        return segment

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.empty((h, w, self.shape[2]), self.dtype)
        if h == 0 or w == 0:
            return out
        tile_h, tile_w = self.tile_hw
        wanted = [(p, row, col) for p in range(len(self._planes))
                  for row in range(y // tile_h, (y + h - 1) // tile_h + 1)
                  for col in range(x // tile_w, (x + w - 1) // tile_w + 1)]
        if len(wanted) >= _PARALLEL_SEGMENTS:
            # codecs release the GIL: decode the segments of a large read side by side
            segments = _decode_pool().map(lambda key: self.segment(*key), wanted)
        else:
            segments = (self.segment(*key) for key in wanted)
        first_channel = np.cumsum([0] + [plane.channels for plane in self._planes])
        for (plane_index, row, col), segment in zip(wanted, segments):
            c0, c1 = first_channel[plane_index], first_channel[plane_index + 1]
            seg_y, seg_x = row * tile_h, col * tile_w
            y0, y1 = max(y, seg_y), min(y + h, seg_y + segment.shape[0])
            x0, x1 = max(x, seg_x), min(x + w, seg_x + segment.shape[1])
            out[y0 - y:y1 - y, x0 - x:x1 - x, c0:c1] = (
                segment[y0 - seg_y:y1 - seg_y, x0 - seg_x:x1 - seg_x])
        return out


#: reads spanning at least this many segments decode them on the shared thread pool
_PARALLEL_SEGMENTS = 9
_pool = None
_pool_lock = threading.Lock()


def _decode_pool():
    """One small thread pool for all slides (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                       thread_name_prefix="ssmamba-tiles")
        return _pool

#: compressions whose tifffile decoding matches OpenSlide's pixel for pixel (tested)
_DIRECT_COMPRESSIONS = {1, 5, 7, 8, 32946}


def direct_tile_levels(path: Path, level_dimensions: list[tuple[int, int]], cache: TileCache):
    """tifffile readers for the pyramid OpenSlide found in a generic or Aperio TIFF.

    Returns (TiffFile, byte reader, [LevelReader]) when every OpenSlide level is a tiled RGB page
    of the same size with a compression decoded identically by both libraries; otherwise None.
    """
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - not readable this way: OpenSlide reads the pixels
        return None
    try:
        pages = {}
        for series in tif.series:
            for level in series.levels:
                page = level.keyframe
                pages.setdefault((page.imagewidth, page.imagelength), level)
        levels = [pages.get(dims) for dims in level_dimensions]
        if any(level is None for level in levels):
            raise LookupError("a level has no matching page")
        for level in levels:
            page = level.keyframe
            if (
                page.compression not in _DIRECT_COMPRESSIONS
                or not _is_plain_tiled_rgb8(page)
                or len(level.pages) != 1
            ):
                raise LookupError("a level is not a plain tiled RGB page")
        reader = _ByteReader(path)
        readers = [
            _TiffLevel(path, i, [_Plane(level.pages[0], 3, 0)],
                       (level.keyframe.imagelength, level.keyframe.imagewidth, 3), np.uint8, 255,
                       reader, cache)
            for i, level in enumerate(levels)
        ]
    except Exception:  # noqa: BLE001 - anything unexpected: OpenSlide reads the pixels
        tif.close()
        return None
    return tif, reader, readers


def _vendor(tif) -> str:
    if tif.is_ome:
        return "ome-tiff"
    if tif.is_qpi:
        return "qptiff"
    if tif.is_svs:
        return "aperio"
    return "tiff"


def _main_series(tif):
    """The image series: the largest one that is not a thumbnail, label or macro."""
    candidates = [s for s in tif.series if s.name.lower() not in _ASSOCIATED_SERIES]
    if not candidates:
        candidates = list(tif.series)
    return max(candidates, key=lambda s: s.keyframe.imagelength * s.keyframe.imagewidth)


def _planes(level_series, path: Path) -> list[_Plane]:
    """The sample planes of one level: channel pages (axis C), or samples stored apart."""
    pages = level_series.pages
    keyframe = level_series.keyframe
    page_ndim = len(keyframe.shape)
    leading_axes = level_series.axes[: len(level_series.axes) - page_ndim]
    leading_shape = level_series.shape[: len(leading_axes)]
    if "C" in leading_axes:
        c_axis = leading_axes.index("C")
        indices = [np.ravel_multi_index(tuple(c if i == c_axis else 0
                                              for i in range(len(leading_shape))), leading_shape)
                   for c in range(leading_shape[c_axis])]
    else:
        indices = [0]
    planes = []
    for index in indices:
        page = pages[int(index)]
        if page is None:
            raise SlideError(f"{path}: page {index} of the image is missing; the file is "
                             "truncated or incomplete")
        samples = page.keyframe.samplesperpixel
        if page.keyframe.planarconfig == 2 and samples > 1:
            per_plane = len(page.dataoffsets) // samples
            planes += [_Plane(page, 1, s * per_plane) for s in range(samples)]
        else:
            planes.append(_Plane(page, samples, 0))
    return planes


def _ome_channels(xml: str) -> tuple[list[str] | None, list[tuple[int, int, int]] | None]:
    """Channel names and colours of the first OME image, when it has named channels."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    channels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Channel"]
    names = [el.get("Name") for el in channels]
    if not channels or any(n is None for n in names):
        return None, None
    colors = []
    for el in channels:
        value = el.get("Color")
        if value is None:
            return names, None
        rgba = int(value) & 0xFFFFFFFF  # signed 32-bit RGBA
        colors.append(((rgba >> 24) & 255, (rgba >> 16) & 255, (rgba >> 8) & 255))
    return names, colors


class TiffSlide(Slide):
    """A slide read with tifffile. Raises SlideError if ``path`` is not a TIFF it can decode."""

    pixel_reader = "tifffile"

    def __init__(self, path: str | Path, mpp: float | tuple[float, float] | None = None, *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        import tifffile

        path = Path(path)
        mpp = normalize_mpp(mpp)
        try:
            self._tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, EOFError) as exc:
            raise SlideError(f"{path}: not a TIFF file tifffile can read ({exc})") from exc
        except OSError as exc:
            raise SlideError(f"{path}: cannot open it ({exc})") from exc
        self._associated_lock = threading.Lock()
        self._reader = None
        try:
            self._reader = _ByteReader(path)
            self._init_slide(path, mpp, cache_bytes)
        except Exception as exc:
            if self._reader is not None:
                self._reader.close()
            self._tif.close()
            if isinstance(exc, SlideError):
                raise
            raise SlideError(f"{path}: cannot make sense of its TIFF structure "
                             f"({type(exc).__name__}: {exc})") from exc

    def _init_slide(self, path, mpp, cache_bytes):
        tif = self._tif
        try:
            series = _main_series(tif)
            level_series = series.levels
        except (IndexError, ValueError, AttributeError) as exc:
            raise SlideError(f"{path}: the TIFF holds no readable image series ({exc})") from exc
        keyframe = series.keyframe
        planes0 = _planes(level_series[0], path)
        channels = sum(p.channels for p in planes0)
        photometric = int(keyframe.photometric)
        # RGB (2) or YCbCr (6) samples in one page: brightfield colour; otherwise fluorescence
        is_rgb = len(planes0) == 1 and channels in (3, 4) and photometric in (2, 6)
        background = (255, 255, 255) if is_rgb else (0,) * channels
        fill = float(np.iinfo(keyframe.dtype).max) if is_rgb and keyframe.dtype.kind == "u" else 0
        cache = TileCache(cache_bytes)
        raw_readers, downsamples = [], []
        height0, width0 = None, None
        for index, level in enumerate(level_series):
            planes = planes0 if index == 0 else _planes(level, path)
            height, width = level.keyframe.imagelength, level.keyframe.imagewidth
            if index == 0:
                height0, width0 = height, width
            elif height >= raw_readers[-1].shape[0] or width >= raw_readers[-1].shape[1]:
                break  # not a reduced level
            raw_readers.append(_TiffLevel(path, index, planes, (height, width, channels),
                                      keyframe.dtype, fill, self._reader, cache))
            downsamples.append((width0 / width + height0 / height) / 2)
        self._check_decodable(raw_readers[-1])
        # an RGBA page: drop alpha (alpha on a slide is an artefact of export tools)
        readers = [_DropAlpha(r) for r in raw_readers] if is_rgb and channels == 4 else raw_readers

        vendor = _vendor(tif)
        properties = {PROPERTY_VENDOR: vendor, "tifffile.series": series.name,
                      "tiff.ImageDescription": keyframe.description[:10_000]}
        channel_names = channel_colors = None
        file_mpp = None
        if tif.is_ome:
            file_mpp = mpp_from_ome_xml(tif.ome_metadata or "", tif.series.index(series))
            if not is_rgb:
                channel_names, channel_colors = _ome_channels(tif.ome_metadata or "")
        elif tif.is_svs:
            file_mpp = mpp_from_aperio_description(keyframe.description)
            for part in keyframe.description.split("|"):
                key, _, value = part.partition("=")
                if key.strip() == "AppMag":
                    properties[PROPERTY_OBJECTIVE_POWER] = value.strip()
        elif tif.is_qpi:
            fields = [parse_qptiff_description(p.page.description) for p in planes0]
            channel_names = [f.get("Biomarker") or f.get("Name") or f"Channel {i}"
                             for i, f in enumerate(fields)]
            channel_colors = [parse_color(f.get("Color")) or (255, 255, 255) for f in fields]
            if fields and "PixelSizeMicrons" in fields[0]:
                xml_mpp = float(fields[0]["PixelSizeMicrons"])
                file_mpp = (xml_mpp, xml_mpp) if plausible_mpp(xml_mpp) else None
            objective = fields[0].get("Objective", "") if fields else ""
            if objective.rstrip("xX").replace(".", "", 1).isdigit():
                properties[PROPERTY_OBJECTIVE_POWER] = objective.rstrip("xX")
        tags = keyframe.tags
        tag_mpp = mpp_from_tiff_resolution(
            _rational(tags.get("XResolution")), _rational(tags.get("YResolution")),
            int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else None)
        if tif.is_qpi or file_mpp is None:
            # QPTIFF: the calibrated resolution tags beat the nominal scan-profile pixel size
            file_mpp = tag_mpp or file_mpp
        slide_mpp = mpp or file_mpp
        if slide_mpp is not None:
            properties[PROPERTY_MPP_Y] = repr(slide_mpp[0])
            properties[PROPERTY_MPP_X] = repr(slide_mpp[1])
        if not is_rgb and channel_names is None and channels > 1:
            channel_names = [f"Channel {i}" for i in range(channels)]

        self._associated_pages = self._find_associated(series)
        super().__init__(
            path,
            vendor=vendor,
            properties=properties,
            mpp=slide_mpp,
            readers=readers,
            downsamples=downsamples,
            is_rgb=is_rgb,
            background=background,
            associated=LazyImages(list(self._associated_pages), self._read_associated),
            channel_names=channel_names,
            channel_colors=channel_colors,
            cache=cache,
        )

    @staticmethod
    def _check_decodable(reader: _TiffLevel) -> None:
        """Decode one segment of the smallest level now, so an unsupported file fails at open."""
        for plane_index in range(reader.plane_count):
            reader.segment(plane_index, 0, 0)

    def _find_associated(self, main_series) -> dict[str, object]:
        pages = {}
        tif = self._tif
        if tif.is_qpi:
            for page in tif.pages:
                kind = parse_qptiff_description(page.description).get("ImageType")
                if kind in _QPTIFF_ASSOCIATED:
                    pages.setdefault(_QPTIFF_ASSOCIATED[kind], page)
        else:
            for series in tif.series:
                name = _ASSOCIATED_SERIES.get(series.name.lower())
                if series is not main_series and name is not None:
                    pages.setdefault(name, series.keyframe)
        return pages

    def _read_associated(self, name: str) -> np.ndarray:
        with self._associated_lock:
            try:
                image = self._associated_pages[name].asarray()
            except Exception as exc:
                raise SlideError(f"{self.path}: cannot decode the associated image {name!r} "
                                 f"({type(exc).__name__}: {exc})") from exc
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        return image[..., :3]

    def _close_backend(self) -> None:
        self._reader.close()
        self._tif.close()


class _DropAlpha(LevelReader):
    """An RGBA level seen as RGB."""

    def __init__(self, inner: LevelReader):
        super().__init__((*inner.shape[:2], 3), inner.dtype, inner.tile_hw)
        self.inner = inner

    @property
    def chunk_hw(self) -> tuple[int, int]:
        return self.inner.chunk_hw

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return np.ascontiguousarray(self.inner.read(y, x, h, w)[..., :3])


def _rational(tag) -> float | None:
    """A TIFF RATIONAL tag's value as a float."""
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, tuple):
        return value[0] / value[1] if len(value) == 2 and value[1] else None
    return float(value)
