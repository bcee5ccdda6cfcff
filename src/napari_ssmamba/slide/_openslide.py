"""Every call into OpenSlide lives here (openslide-python's ``lowlevel`` module and the C library).

OpenSlide handles are not safe to share between threads that read at once, and an error latches:
once a handle has failed, every later call on it fails too. ``HandlePool`` therefore lends each
concurrent reader its own handle (all sharing one bounded tile cache), closes a handle that
failed, and opens a fresh one for the next read.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _lowlevel():
    from openslide import lowlevel

    return lowlevel


def available() -> bool:
    """True when openslide-python and the OpenSlide library can be loaded."""
    try:
        _lowlevel()
    except (ImportError, OSError):
        return False
    return True


def detect_vendor(path: Path) -> str | None:
    """OpenSlide's name for the format of ``path`` (e.g. "aperio"), or None if it cannot read it."""
    return _lowlevel().detect_vendor(str(path))


class OpenSlideFailure(Exception):
    """OpenSlide refused a file or a read; ``reason`` is its message."""

    def __init__(self, reason: str, unsupported: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.unsupported = unsupported


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    import openslide

    try:
        yield
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise OpenSlideFailure(str(exc), unsupported=True) from exc
    except openslide.OpenSlideError as exc:
        raise OpenSlideFailure(str(exc)) from exc


_LITTLE_ENDIAN = sys.byteorder == "little"
_UINT32_POINTER = ctypes.POINTER(ctypes.c_uint32)


def _composite(rgb: np.ndarray, alpha: np.ndarray, background, premultiplied: bool) -> np.ndarray:
    """RGB over an opaque background colour, as uint8."""
    a = alpha.astype(np.float32) / 255
    color = rgb.astype(np.float32) if premultiplied else rgb * a
    return (color + np.asarray(background, np.float32) * (1 - a) + 0.5).astype(np.uint8)


class HandlePool:
    """OpenSlide handles on one file, lent one per concurrent reader, sharing one tile cache."""

    def __init__(self, path: Path, cache_bytes: int):
        self.path = path
        lowlevel = _lowlevel()
        with _translate_errors():
            self._cache = lowlevel.cache_create(int(cache_bytes))
            first = self._open()
            self.properties = {
                name: lowlevel.get_property_value(first, name) or ""
                for name in lowlevel.get_property_names(first)
            }
            count = lowlevel.get_level_count(first)
            self.level_dimensions = [lowlevel.get_level_dimensions(first, i) for i in range(count)]
            self.level_downsamples = [lowlevel.get_level_downsample(first, i)
                                      for i in range(count)]
            self.associated_names = list(lowlevel.get_associated_image_names(first))
        self._idle = [first]
        self._lock = threading.Lock()
        self._closed = False

    def _open(self):
        lowlevel = _lowlevel()
        handle = lowlevel.open(str(self.path))
        lowlevel.set_cache(handle, self._cache)
        return handle

    @contextlib.contextmanager
    def _handle(self) -> Iterator:
        with self._lock:
            if self._closed:
                raise OpenSlideFailure("the slide was closed")
            handle = self._idle.pop() if self._idle else None
        with _translate_errors():
            if handle is None:
                handle = self._open()
            try:
                yield handle
            except BaseException:
                # errors latch on the handle: never use it again
                _lowlevel().close(handle)
                raise
        with self._lock:
            if self._closed:
                _lowlevel().close(handle)
            else:
                self._idle.append(handle)

    def read_rgb(self, l0_x: int, l0_y: int, level: int, w: int, h: int,
                 background: tuple[int, int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB of a region at level-0 (x, y) of ``level``, on ``background``.

        OpenSlide leaves pixels outside the scanned area transparent; they are composited onto
        the background, so the result is what the slide looks like.
        """
        lowlevel = _lowlevel()
        with self._handle() as handle:
            if not hasattr(lowlevel, "_read_region"):
                rgba = np.asarray(lowlevel.read_region(handle, l0_x, l0_y, level, w, h))
                return _composite(rgba[..., :3], rgba[..., 3:], background, premultiplied=False)
            # straight into a numpy buffer: one pass fewer than PIL's RGBA conversion
            argb = np.empty((h, w), np.uint32)
            lowlevel._read_region(handle, argb.ctypes.data_as(_UINT32_POINTER), l0_x, l0_y,
                                  level, w, h)
        # premultiplied ARGB words in native byte order
        channels = argb.view(np.uint8).reshape(h, w, 4)
        rgb, alpha = (channels[..., 2::-1], channels[..., 3:]) if _LITTLE_ENDIAN else (
            channels[..., 1:], channels[..., :1])
        if argb.size == 0 or argb.min() >= 0xFF000000:
            return np.ascontiguousarray(rgb)
        return _composite(rgb, alpha, background, premultiplied=True)

    def read_associated(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail...) as (h, w, 3) uint8 on white."""
        with self._handle() as handle:
            image = _lowlevel().read_associated_image(handle, name)
        rgba = np.asarray(image)
        return _composite(rgba[..., :3], rgba[..., 3:], (255, 255, 255), premultiplied=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for handle in idle:
            _lowlevel().close(handle)
