"""Stitching tile values into maps on a regular grid over level 0.

A :class:`Grid` has an origin and a cell size in level-0 px. A tile paints the cells whose centres
lie inside its box; where tiles overlap, their values are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Cells of ``cell_l0`` level-0 px; cell ``(i, j)`` starts at ``origin + (i, j) * cell_l0`` (y, x)."""

    origin_l0_yx: tuple[float, float]
    cell_l0: float
    shape_hw: tuple[int, int]

    @classmethod
    def covering(cls, boxes_l0: np.ndarray, cell_l0: float) -> Grid:
        """The smallest grid aligned at multiples of ``cell_l0`` that holds every box."""
        boxes_l0 = np.asarray(boxes_l0, dtype=np.float64).reshape(-1, 4)
        if len(boxes_l0) == 0:
            return cls((0.0, 0.0), float(cell_l0), (0, 0))
        x0 = np.floor(boxes_l0[:, 0].min() / cell_l0) * cell_l0
        y0 = np.floor(boxes_l0[:, 1].min() / cell_l0) * cell_l0
        x1 = (boxes_l0[:, 0] + boxes_l0[:, 2]).max()
        y1 = (boxes_l0[:, 1] + boxes_l0[:, 3]).max()
        shape = (int(np.ceil((y1 - y0) / cell_l0)), int(np.ceil((x1 - x0) / cell_l0)))
        return cls((float(y0), float(x0)), float(cell_l0), shape)

    def cell_ranges(self, box_l0) -> tuple[int, int, int, int]:
        """Cells ``i0:i1, j0:j1`` whose centres lie inside ``box_l0`` (minx, miny, width, height)."""
        x, y, w, h = box_l0
        oy, ox = self.origin_l0_yx
        c = self.cell_l0
        j0 = int(np.ceil((x - ox) / c - 0.5))
        j1 = int(np.ceil((x + w - ox) / c - 0.5))
        i0 = int(np.ceil((y - oy) / c - 0.5))
        i1 = int(np.ceil((y + h - oy) / c - 0.5))
        H, W = self.shape_hw
        return max(i0, 0), min(max(i1, i0 + 1), H), max(j0, 0), min(max(j1, j0 + 1), W)

    def cell_centres_l0(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (y, x) of every cell centre, each of shape ``shape_hw``."""
        oy, ox = self.origin_l0_yx
        ys = oy + (np.arange(self.shape_hw[0]) + 0.5) * self.cell_l0
        xs = ox + (np.arange(self.shape_hw[1]) + 0.5) * self.cell_l0
        return np.meshgrid(ys, xs, indexing="ij")

    def layer_transform(self, mpp_yx: tuple[float, float] = (1.0, 1.0)):
        """napari ``scale`` and ``translate`` that lay this grid over a level-0 layer of scale ``mpp``.

        napari puts pixel centres at integer data coordinates, so cell ``(0, 0)``'s centre sits at
        level-0 pixel ``origin + (cell - 1) / 2``.
        """
        scale = (self.cell_l0 * mpp_yx[0], self.cell_l0 * mpp_yx[1])
        translate = tuple(
            (o + (self.cell_l0 - 1) / 2) * m for o, m in zip(self.origin_l0_yx, mpp_yx)
        )
        return scale, translate


def stitch_values(
    grid: Grid, boxes_l0: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Average per-tile ``values`` (n, c) over the cells each tile covers.

    Returns ``(maps, count)``: maps (c, h, w) float32 (0 where no tile), count (h, w) int32.
    """
    values = np.asarray(values, dtype=np.float32)
    c = values.shape[1]
    total = np.zeros((c, *grid.shape_hw), dtype=np.float64)
    count = np.zeros(grid.shape_hw, dtype=np.int32)
    for box, value in zip(boxes_l0, values):
        i0, i1, j0, j1 = grid.cell_ranges(box)
        total[:, i0:i1, j0:j1] += value[:, None, None]
        count[i0:i1, j0:j1] += 1
    maps = np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
    return maps, count


def stitch_maps(grid: Grid, boxes_l0: np.ndarray, tile_maps) -> np.ndarray:
    """Average per-tile 2-D maps (n, h, w) over the grid, each resized to the cells its tile covers.

    Resizing averages over areas (PIL box filter). Cells no tile covers are 0.
    """
    from PIL import Image

    total = np.zeros(grid.shape_hw, dtype=np.float64)
    count = np.zeros(grid.shape_hw, dtype=np.int32)
    for box, tile_map in zip(boxes_l0, tile_maps):
        i0, i1, j0, j1 = grid.cell_ranges(box)
        if i1 <= i0 or j1 <= j0:
            continue
        image = Image.fromarray(np.asarray(tile_map, dtype=np.float32), mode="F")
        resized = np.asarray(image.resize((j1 - j0, i1 - i0), Image.Resampling.BOX))
        total[i0:i1, j0:j1] += resized
        count[i0:i1, j0:j1] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


def cells_inside(grid: Grid, geometries) -> np.ndarray:
    """Boolean (h, w): cells whose centre lies inside any of ``geometries`` (level-0 px)."""
    import shapely

    ys, xs = grid.cell_centres_l0()
    inside = np.zeros(grid.shape_hw, dtype=bool)
    for geometry in geometries:
        inside |= shapely.contains_xy(geometry, xs, ys)
    return inside
