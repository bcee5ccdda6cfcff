"""Slides read through OpenSlide: Aperio, Hamamatsu, MIRAX, Leica, Ventana, Philips, DICOM, and
the tiled TIFFs OpenSlide calls ``generic-tiff``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from napari_ssmamba.errors import SlideError
from napari_ssmamba.slide import _openslide
from napari_ssmamba.slide.cache import TileCache
from napari_ssmamba.slide.properties import (
    PROPERTY_BACKGROUND_COLOR,
    PROPERTY_MPP_X,
    PROPERTY_MPP_Y,
    PROPERTY_VENDOR,
    mpp_from_tiff_resolution,
    plausible_mpp,
)
from napari_ssmamba.slide.slide import (
    DEFAULT_CACHE_BYTES,
    LazyImages,
    LevelReader,
    Slide,
    normalize_mpp,
)

_DEFAULT_TILE = 512


class _OpenSlideLevel(LevelReader):
    """One OpenSlide level, read region by region through the handle pool."""

    def __init__(self, slide: OpenSlideSlide, level: int, downsample: float, shape, tile_hw):
        super().__init__(shape, np.uint8, tile_hw)
        self._slide = slide
        self._level = level
        self._downsample = downsample

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        # OpenSlide takes level-0 coordinates and floors them back to this level
        l0_x = x if self._level == 0 else math.ceil(x * self._downsample)
        l0_y = y if self._level == 0 else math.ceil(y * self._downsample)
        try:
            return self._slide._pool.read_rgb(l0_x, l0_y, self._level, w, h,
                                              self._slide.background)
        except _openslide.OpenSlideFailure as exc:
            raise SlideError(
                f"{self._slide.path}: OpenSlide could not read level {self._level} at level-0 "
                f"(x={l0_x}, y={l0_y}), size {w}x{h}: {exc.reason}. The file is probably "
                "corrupt; re-export it from the scanner software."
            ) from exc


def _background(properties: dict[str, str]) -> tuple[int, int, int]:
    color = properties.get(PROPERTY_BACKGROUND_COLOR, "")
    try:
        return tuple(int(color[i:i + 2], 16) for i in (0, 2, 4)) if len(color) == 6 else (
            255, 255, 255)
    except ValueError:
        return (255, 255, 255)


def _mpp(properties: dict[str, str]) -> tuple[float, float] | None:
    """(mpp_y, mpp_x) from OpenSlide's properties, rejecting 72-dpi-style TIFF placeholders."""
    try:
        mpp = (float(properties[PROPERTY_MPP_Y]), float(properties[PROPERTY_MPP_X]))
    except (KeyError, ValueError):
        return None
    if properties.get(PROPERTY_VENDOR) == "generic-tiff":
        # generic TIFF pixel sizes come from the resolution tags: check them like tifffile's
        try:
            resolution = (float(properties["tiff.XResolution"]),
                          float(properties["tiff.YResolution"]))
        except (KeyError, ValueError):
            return None
        if mpp_from_tiff_resolution(*resolution, properties.get("tiff.ResolutionUnit")) is None:
            return None
    return mpp if all(plausible_mpp(v) for v in mpp) else None


#: vendors whose tiled TIFF pages tifffile decodes exactly as OpenSlide does, several times faster
#: (OpenSlide composites every region through cairo)
DIRECT_TILE_VENDORS = ("aperio", "generic-tiff")


class OpenSlideSlide(Slide):
    """A slide opened with OpenSlide. Raises SlideError if OpenSlide cannot open ``path``.

    OpenSlide supplies the metadata, levels and associated images. Pixels come from OpenSlide,
    or, with ``pixel_reader="auto"``, straight from the TIFF tiles for Aperio and generic TIFF
    pyramids made of plain tiled RGB pages (same pixels, no compositing cost);
    ``pixel_reader="openslide"`` forces OpenSlide. ``self.pixel_reader`` says which is used.
    """

    def __init__(self, path: str | Path, mpp: float | tuple[float, float] | None = None, *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, pixel_reader: str = "auto"):
        if pixel_reader not in ("auto", "openslide"):
            raise ValueError(f"pixel_reader must be 'auto' or 'openslide', got {pixel_reader!r}")
        path = Path(path)
        mpp = normalize_mpp(mpp)
        try:
            self._pool = _openslide.HandlePool(path, cache_bytes)
        except _openslide.OpenSlideFailure as exc:
            raise SlideError(f"{path}: OpenSlide cannot open it: {exc.reason}") from exc
        properties = self._pool.properties
        background = _background(properties)
        cache = TileCache(cache_bytes)
        self._direct = None
        if pixel_reader == "auto" and properties.get(PROPERTY_VENDOR) in DIRECT_TILE_VENDORS:
            from napari_ssmamba.slide.tiff_slide import direct_tile_levels

            self._direct = direct_tile_levels(path, self._pool.level_dimensions, cache)
        if self._direct is not None:
            readers = self._direct[2]
            self.pixel_reader = "tifffile"
        else:
            readers = []
            for level, ((w, h), downsample) in enumerate(
                zip(self._pool.level_dimensions, self._pool.level_downsamples)
            ):
                tile_hw = (
                    int(properties.get(f"openslide.level[{level}].tile-height", _DEFAULT_TILE)),
                    int(properties.get(f"openslide.level[{level}].tile-width", _DEFAULT_TILE)),
                )
                readers.append(_OpenSlideLevel(self, level, downsample, (h, w, 3), tile_hw))
            self.pixel_reader = "openslide"
        mpp = mpp or _mpp(properties)
        # the MPP keys say what ``mpp`` says: an override, or nothing for a placeholder
        properties = {k: v for k, v in properties.items() if k not in (PROPERTY_MPP_X,
                                                                      PROPERTY_MPP_Y)}
        if mpp is not None:
            properties.update({PROPERTY_MPP_Y: repr(mpp[0]), PROPERTY_MPP_X: repr(mpp[1])})
        super().__init__(
            path,
            vendor=properties.get(PROPERTY_VENDOR, "unknown"),
            properties=properties,
            mpp=mpp,
            readers=readers,
            downsamples=list(self._pool.level_downsamples),
            is_rgb=True,
            background=background,
            associated=LazyImages(self._pool.associated_names, self._read_associated),
            cache=cache,
        )

    def _read_associated(self, name: str) -> np.ndarray:
        try:
            return self._pool.read_associated(name)
        except _openslide.OpenSlideFailure as exc:
            raise SlideError(f"{self.path}: OpenSlide could not read the associated image "
                             f"{name!r}: {exc.reason}") from exc

    def _close_backend(self) -> None:
        self._pool.close()
        if self._direct is not None:
            tif, reader, _ = self._direct
            reader.close()
            tif.close()

