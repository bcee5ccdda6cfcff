"""Stitching tile values into maps on a regular grid over level 0.

A :class:`Grid` has an origin and a cell size in level-0 px. A tile paints the cells whose centres
lie inside its box; where tiles overlap, their values are averaged.
"""

from __future__ import annotations

import functools
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

    def cell_ranges_of(self, boxes_l0) -> np.ndarray:
        """Cells ``i0:i1, j0:j1`` whose centres lie inside each box (minx, miny, width, height).

        (n, 4) int64 rows ``i0, i1, j0, j1``, clipped to the grid (empty for a box off it).
        """
        boxes = np.asarray(boxes_l0, dtype=np.float64).reshape(-1, 4)
        x, y, w, h = boxes.T
        oy, ox = self.origin_l0_yx
        c = self.cell_l0
        j0 = np.ceil((x - ox) / c - 0.5).astype(np.int64)
        j1 = np.ceil((x + w - ox) / c - 0.5).astype(np.int64)
        i0 = np.ceil((y - oy) / c - 0.5).astype(np.int64)
        i1 = np.ceil((y + h - oy) / c - 0.5).astype(np.int64)
        H, W = self.shape_hw
        return np.stack(
            [
                np.maximum(i0, 0),
                np.minimum(np.maximum(i1, i0 + 1), H),
                np.maximum(j0, 0),
                np.minimum(np.maximum(j1, j0 + 1), W),
            ],
            axis=1,
        )

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
    for (i0, i1, j0, j1), value in zip(grid.cell_ranges_of(boxes_l0), values):
        total[:, i0:i1, j0:j1] += value[:, None, None]
        count[i0:i1, j0:j1] += 1
    maps = np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
    return maps, count


def stitch_maps(grid: Grid, boxes_l0: np.ndarray, tile_maps) -> np.ndarray:
    """Average per-tile 2-D maps (n, h, w) over the grid, each resized to the cells its tile covers.

    Resizing averages over areas (PIL's box filter, as weight matrices: the maps of tiles that
    cover the same number of cells are resized together). Cells no tile covers are 0.
    """
    tile_maps = np.asarray(tile_maps, dtype=np.float64)
    ranges = grid.cell_ranges_of(boxes_l0)
    total = np.zeros(grid.shape_hw, dtype=np.float64)
    count = np.zeros(grid.shape_hw, dtype=np.int32)
    sizes = np.stack([ranges[:, 1] - ranges[:, 0], ranges[:, 3] - ranges[:, 2]], axis=1)
    for size in np.unique(sizes, axis=0):
        rows, cols = (int(v) for v in size)
        if rows <= 0 or cols <= 0:
            continue
        members = np.flatnonzero((sizes == size).all(axis=1))
        resized = (
            _box_weights(tile_maps.shape[1], rows)
            @ tile_maps[members]
            @ _box_weights(tile_maps.shape[2], cols).T
        )
        for (i0, i1, j0, j1), values in zip(ranges[members], resized):
            total[i0:i1, j0:j1] += values
            count[i0:i1, j0:j1] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _box_weights(source: int, target: int) -> np.ndarray:
    """(target, source): PIL's box-filter resize of ``source`` values to ``target``, as a matrix
    (resizing is linear, so column k is the resize of the k-th unit vector)."""
    from PIL import Image

    units = np.eye(source, dtype=np.float32)
    return np.stack(
        [
            np.asarray(
                Image.fromarray(unit[None], mode="F").resize((target, 1), Image.Resampling.BOX)
            )[0]
            for unit in units
        ],
        axis=1,
    ).astype(np.float64)


def cells_inside(grid: Grid, geometries) -> np.ndarray:
    """Boolean (h, w): cells whose centre lies inside any of ``geometries`` (level-0 px); a
    geometry that holds no cell centre (one smaller than a cell) gets the cell it lies in."""
    import shapely

    ys, xs = grid.cell_centres_l0()
    inside = np.zeros(grid.shape_hw, dtype=bool)
    for geometry in geometries:
        hits = shapely.contains_xy(geometry, xs, ys)
        if not hits.any():
            point = geometry.representative_point()
            row, col = (
                int(np.floor((v - o) / grid.cell_l0))
                for v, o in zip((point.y, point.x), grid.origin_l0_yx)
            )
            if 0 <= row < grid.shape_hw[0] and 0 <= col < grid.shape_hw[1]:
                hits[row, col] = True
        inside |= hits
    return inside
