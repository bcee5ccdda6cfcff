"""Heatmaps as tiled pyramidal TIFFs in slide coordinates, which OpenSlide and QuPath open.

Layout (OpenSlide's generic TIFF): level 0 first, then each reduced level as a separate tiled page
with ``NewSubfileType = 1``; resolution tags in pixels per centimetre give the MPP. Pixel ``(0, 0)``
of the TIFF is level-0 pixel ``(0, 0)`` of the slide, so the heatmap registers by scale alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from napari_ssmamba._atomic import atomic_path

TILE = 256
#: the heatmap TIFF's pixels are at most this many level-0 px on a side
MAX_TIFF_PIXEL_L0 = 16
#: ... and at most this many µm, an MPP slide readers keep (ours drops those above 50 µm/px)
MAX_TIFF_PIXEL_UM = 8.0
#: the start of the ImageDescription of the heatmaps we write, by which our reader knows them
HEATMAP_DESCRIPTION = "napari-ssmamba heatmap"


def render_heatmap_rgba(result) -> tuple[np.ndarray, float]:
    """The class heatmap as RGBA over the whole slide, one pixel per heatmap cell, from level-0 (0, 0).

    Colour is the probability-weighted mixture of the class colours; alpha is 255 where tiles lie
    and 0 elsewhere. Returns ``(rgba, cell_l0)``.
    """
    grid = result.heatmap_grid
    cell = grid.cell_l0
    width, height = result.slide_dimensions_wh
    shape = (int(np.ceil(height / cell)), int(np.ceil(width / cell)))
    rgba = np.zeros((*shape, 4), dtype=np.uint8)
    if result.heatmaps.size == 0:
        return rgba, cell
    colors = np.asarray(result.class_colors, dtype=np.float32)  # (classes, 3)
    mixed = np.einsum("chw,ck->hwk", result.heatmaps, colors)
    covered = result.labels > 0
    i0 = round(grid.origin_l0_yx[0] / cell)
    j0 = round(grid.origin_l0_yx[1] / cell)
    h = min(grid.shape_hw[0], shape[0] - i0)
    w = min(grid.shape_hw[1], shape[1] - j0)
    rgba[i0 : i0 + h, j0 : j0 + w, :3] = np.clip(mixed[:h, :w], 0, 255).round().astype(np.uint8)
    rgba[i0 : i0 + h, j0 : j0 + w, 3] = np.where(covered[:h, :w], 255, 0)
    return rgba, cell


def write_pyramidal_tiff(
    path: str | os.PathLike,
    rgb: np.ndarray,
    mpp_yx: tuple[float, float] | None,
    tile: int = TILE,
    compression: str = "zlib",
    description: str | None = None,
) -> Path:
    """Write an (h, w, 3) uint8 image as a tiled pyramidal TIFF with ``mpp_yx`` µm/px, atomically.

    Levels halve until the image fits one tile; ``description`` is level 0's ImageDescription.
    """
    import tifffile
    from PIL import Image

    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    levels = [rgb]
    while max(levels[-1].shape[:2]) > tile:
        h, w = levels[-1].shape[:2]
        reduced = Image.fromarray(levels[-1]).resize(
            (max(w // 2, 1), max(h // 2, 1)), Image.Resampling.BOX
        )
        levels.append(np.asarray(reduced))
    big = rgb.nbytes * 4 // 3 > 2**32 - 2**25
    path = Path(path)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=big) as tif:
        for index, level in enumerate(levels):
            kwargs = {}
            if mpp_yx is not None:
                factor_y = rgb.shape[0] / level.shape[0]
                factor_x = rgb.shape[1] / level.shape[1]
                kwargs = {
                    "resolution": (1e4 / (mpp_yx[1] * factor_x), 1e4 / (mpp_yx[0] * factor_y)),
                    "resolutionunit": "CENTIMETER",
                }
            tif.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression=compression,
                subfiletype=1 if index else 0,
                metadata=None,
                description=None if index else description,
                **kwargs,
            )
    return path


def write_heatmap_tiff(result, path: str | os.PathLike) -> Path:
    """The class heatmap of ``result`` as a pyramidal RGB TIFF covering the slide from level-0 (0, 0).

    Each heatmap cell is drawn as a block of pixels at most ``MAX_TIFF_PIXEL_L0`` level-0 px and
    ``MAX_TIFF_PIXEL_UM`` µm wide; the TIFF's MPP is the slide's MPP times that pixel size. Cells
    without tiles are white.
    """
    rgba, cell = render_heatmap_rgba(result)
    cell_um = cell * max(result.mpp_yx)
    repeat = max(round(cell / MAX_TIFF_PIXEL_L0), math.ceil(cell_um / MAX_TIFF_PIXEL_UM), 1)
    pixel_l0 = cell / repeat
    rgb = np.where(rgba[..., 3:4] > 0, rgba[..., :3], 255).astype(np.uint8)
    rgb = np.repeat(np.repeat(rgb, repeat, axis=0), repeat, axis=1)
    width, height = result.slide_dimensions_wh
    rgb = rgb[: int(np.ceil(height / pixel_l0)), : int(np.ceil(width / pixel_l0))]
    mpp = tuple(m * pixel_l0 for m in result.mpp_yx)
    return write_pyramidal_tiff(path, rgb, mpp, description=HEATMAP_DESCRIPTION)
