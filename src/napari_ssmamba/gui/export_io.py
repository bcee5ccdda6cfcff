"""npe2 writer: an image layer (a heatmap) as a tiled pyramidal TIFF in slide coordinates."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def layer_rgb(data, meta: dict) -> np.ndarray:
    """The layer's level 0 as (h, w, 3) uint8: RGB as is, otherwise through its colormap and
    limits, laid over white where the colormap is transparent."""
    from napari.utils.colormaps import ensure_colormap

    array = _level0(data, meta)
    if _is_rgb(array, meta):
        return np.ascontiguousarray(array[..., :3], dtype=np.uint8)
    array = array.astype(np.float32)
    if array.ndim != 2:
        raise ValueError(
            f"cannot write a {array.ndim}-D image layer as a heatmap TIFF; give a 2-D one"
        )
    low, high = meta.get("contrast_limits") or (float(np.nanmin(array)), float(np.nanmax(array)))
    normalised = np.clip((array - low) / max(high - low, 1e-12), 0, 1)
    colormap = ensure_colormap(meta.get("colormap", "gray"))
    rgba = colormap.map(np.nan_to_num(normalised).ravel()).reshape(*array.shape, 4)
    over_white = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # as on glass, not black
    return (over_white * 255).round().astype(np.uint8)


def _level0(data, meta: dict) -> np.ndarray:
    return np.asarray(data[0] if meta.get("multiscale") else data)


def _is_rgb(array: np.ndarray, meta: dict) -> bool:
    """Whether the layer shows its pixels as colours (else through a colormap: a heatmap)."""
    return bool(
        meta.get("rgb")
        or (array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8)
    )


def write_heatmap(path: str, data, meta: dict) -> list[str]:
    """Write an image layer as a pyramidal TIFF whose pixel (0, 0) is the slide's origin.

    The layer's ``translate`` is turned into a white margin of whole pixels. With units in µm, its
    ``scale`` gives the TIFF's MPP, each layer pixel drawn as a block of pixels at most
    ``MAX_TIFF_PIXEL_UM`` wide: a heatmap cell of 112 µm would be an MPP that slide readers take
    for a wrong one and drop (ours does above 50 µm/px). A single-channel layer, drawn through its
    colormap, is marked as a heatmap, which our reader lays over the slide.
    """
    from napari_ssmamba.export.tiff import (
        HEATMAP_DESCRIPTION,
        MAX_TIFF_PIXEL_UM,
        write_pyramidal_tiff,
    )

    rgb = layer_rgb(data, meta)
    scale = np.asarray(meta.get("scale", (1.0, 1.0)), dtype=float)[-2:]
    translate = np.asarray(meta.get("translate", (0.0, 0.0)), dtype=float)[-2:]
    units = [str(u) for u in (meta.get("units") or ())]
    in_microns = bool(units) and all(u in ("micrometer", "µm", "um", "micron") for u in units[-2:])
    repeat = max(math.ceil(scale.max() / MAX_TIFF_PIXEL_UM), 1) if in_microns else 1
    pixel = scale / repeat
    # napari centres a layer's pixel (0, 0) on its translate: its top-left corner is half a pixel
    # before it
    pad_y, pad_x = (max(round(e / p), 0) for e, p in zip(translate - scale / 2, pixel))
    rgb = np.repeat(np.repeat(rgb, repeat, axis=0), repeat, axis=1)
    if pad_y or pad_x:
        rgb = np.pad(rgb, ((pad_y, 0), (pad_x, 0), (0, 0)), constant_values=255)
    path = write_pyramidal_tiff(
        Path(path),
        rgb,
        tuple(pixel) if in_microns else None,
        description=None if _is_rgb(_level0(data, meta), meta) else HEATMAP_DESCRIPTION,
    )
    return [str(path)]
