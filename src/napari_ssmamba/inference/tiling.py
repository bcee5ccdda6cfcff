"""Tiling of ROIs (or of the whole tissue) at the model's microns per pixel.

Frames: names with ``l0`` are in level-0 slide pixels; ``tile_size`` and ``stride`` are in pixels
of the model's input tile.

Rules, stated once:

- Tiles lie on one slide-wide grid: tile ``(i, j)`` starts at level-0 ``(j * stride_l0, i * stride_l0)``
  and is ``tile_l0`` px wide, where ``tile_l0 = tile_size * model_mpp / slide_mpp`` (tiles are square;
  ``slide_mpp`` is the mean of the slide's y and x MPP). One grid for all ROIs means that
  overlapping ROIs share tiles and a moved ROI reuses the tiles it still covers.
- Edge rule: a tile is kept for an ROI when at least ``min_roi_fraction`` (default half) of its area
  lies inside the ROI (holes excluded); its weight in the ROI's class is that fraction times the
  tissue fraction. An ROI too small to hold any such tile gets one tile centred on it, unless it
  lies wholly outside the slide: such an ROI gets no tile.
- Background: a kept tile with less than ``min_tissue_fraction`` tissue (see ``tissue.py``) is not
  predicted and is counted as background for its ROI.
- Level: tiles are read from the lowest-resolution level whose MPP is at most the model's MPP
  (times 1.01, for rounding in slide metadata) and resampled to ``tile_size``; a slide coarser than the
  model is read at level 0 and upsampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_ROI_FRACTION = 0.5
MIN_TISSUE_FRACTION = 0.25
#: a level counts as "at most the model's MPP" within this relative tolerance
MPP_TOLERANCE = 1.01


@dataclass(frozen=True)
class TileGeometry:
    """How model tiles map onto the slide: sizes in level-0 px, the level to read, its size there."""

    tile_size: int
    tile_l0: int
    stride_l0: int
    level: int
    level_downsample: float
    read_size: int


def choose_level(level_downsamples, slide_mpp: float, target_mpp: float) -> int:
    """Index of the lowest-resolution level whose MPP is at most ``target_mpp`` (level 0 if none)."""
    best = 0
    for level, downsample in enumerate(level_downsamples):
        if (
            slide_mpp * downsample <= target_mpp * MPP_TOLERANCE
            and downsample >= level_downsamples[best]
        ):
            best = level
    return best


def tile_geometry(
    slide_mpp: tuple[float, float],
    level_downsamples,
    tile_size: int,
    model_mpp: float,
    stride: int | None = None,
) -> TileGeometry:
    """Tile sizes for a slide of ``slide_mpp`` (y, x) and a model of ``tile_size`` px at ``model_mpp``.

    ``stride`` is in model pixels (``tile_size`` = no overlap, ``tile_size // 2`` = half overlap).
    """
    stride = tile_size if stride is None else int(stride)
    if not 0 < stride:
        raise ValueError(f"stride must be a positive number of model pixels, got {stride}")
    mpp = float(np.mean(slide_mpp))
    tile_l0 = max(round(tile_size * model_mpp / mpp), 1)
    stride_l0 = max(round(stride * model_mpp / mpp), 1)
    level = choose_level(level_downsamples, mpp, model_mpp)
    downsample = float(level_downsamples[level])
    read_size = max(round(tile_l0 / downsample), 1)
    return TileGeometry(tile_size, tile_l0, stride_l0, level, downsample, read_size)


@dataclass
class TilePlan:
    """Tiles to predict, as boxes ``(minx, miny, width, height)`` in level-0 px, and whom they serve.

    ``members`` has one row ``(tile index, ROI index, weight)`` per use of a tile by an ROI, so a
    tile shared by two ROIs is predicted once. Whole-tissue plans have one ROI, index 0.
    """

    geometry: TileGeometry
    boxes_l0: np.ndarray  # (n, 4) int64
    tissue_fraction: np.ndarray  # (n,) float32
    members: np.ndarray  # (m, 3): tile index, roi index, weight (float64)
    background_per_roi: np.ndarray  # (n_rois,) int64: tiles skipped as background
    n_rois: int
    roi_geometries: list = field(default_factory=list)


def _grid_boxes(bounds, geometry: TileGeometry, slide_wh: tuple[int, int]) -> np.ndarray:
    """Grid boxes whose tile intersects ``bounds`` (minx, miny, maxx, maxy), clipped to the slide origin."""
    minx, miny, maxx, maxy = bounds
    s, t = geometry.stride_l0, geometry.tile_l0
    width, height = slide_wh
    j0 = max(int(np.floor((minx - t) / s)) + 1, 0)
    i0 = max(int(np.floor((miny - t) / s)) + 1, 0)
    j1 = int(np.ceil(min(maxx, width) / s))
    i1 = int(np.ceil(min(maxy, height) / s))
    if j1 <= j0 or i1 <= i0:
        return np.zeros((0, 4), dtype=np.int64)
    jj, ii = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1))
    xs = (jj.ravel() * s).astype(np.int64)
    ys = (ii.ravel() * s).astype(np.int64)
    return np.stack([xs, ys, np.full_like(xs, t), np.full_like(ys, t)], axis=1)


def boxes_to_polygons(boxes_l0: np.ndarray):
    """Shapely polygons of ``(n, 4)`` boxes ``minx, miny, width, height`` (level-0 px)."""
    import shapely

    x0, y0 = boxes_l0[:, 0], boxes_l0[:, 1]
    x1, y1 = x0 + boxes_l0[:, 2], y0 + boxes_l0[:, 3]
    return shapely.box(x0, y0, x1, y1)


def plan_tiles(
    geometry: TileGeometry,
    slide_wh: tuple[int, int],
    tissue=None,
    rois=None,
    min_roi_fraction: float = MIN_ROI_FRACTION,
    min_tissue_fraction: float = MIN_TISSUE_FRACTION,
) -> TilePlan:
    """Tiles for ``rois`` (shapely geometries in level-0 px) or, when ``rois`` is None, the whole slide.

    ``tissue`` is a :class:`~napari_ssmamba.inference.tissue.TissueMask` (None: everything is tissue).
    """
    import shapely

    width, height = slide_wh
    if rois is None:
        candidates = _grid_boxes((0, 0, width, height), geometry, slide_wh)
        per_roi = [(candidates, np.ones(len(candidates)))]
        roi_geometries = []
    else:
        roi_geometries = [shapely.make_valid(g) for g in rois]
        per_roi = []
        for roi in roi_geometries:
            boxes = _grid_boxes(roi.bounds, geometry, slide_wh)
            fraction = np.zeros(len(boxes))
            if len(boxes):
                polygons = boxes_to_polygons(boxes)
                shapely.prepare(roi)
                fraction = shapely.area(shapely.intersection(polygons, roi)) / shapely.area(
                    polygons
                )
            keep = fraction >= min_roi_fraction
            boxes, fraction = boxes[keep], fraction[keep]
            if len(boxes) == 0 and not roi.is_empty and not lies_outside(roi, slide_wh):
                boxes = _centred_box(roi, geometry, slide_wh)
                fraction = np.ones(1)
            per_roi.append((boxes, fraction))

    n_rois = len(per_roi)
    all_boxes = (
        np.concatenate([b for b, _ in per_roi]) if per_roi else np.zeros((0, 4), dtype=np.int64)
    )
    if len(all_boxes):
        unique_boxes, inverse = np.unique(all_boxes, axis=0, return_inverse=True)
        inverse = inverse.ravel()
    else:
        unique_boxes, inverse = all_boxes.reshape(0, 4), np.zeros(0, dtype=np.int64)
    tissue_fraction = (
        tissue.fraction_in_boxes(unique_boxes)
        if tissue is not None
        else np.ones(len(unique_boxes), dtype=np.float32)
    )
    is_tissue = tissue_fraction >= min_tissue_fraction

    members, background = [], np.zeros(n_rois, dtype=np.int64)
    offset = 0
    for roi_index, (boxes, fraction) in enumerate(per_roi):
        tile_index = inverse[offset : offset + len(boxes)]
        offset += len(boxes)
        tissue_ok = is_tissue[tile_index]
        background[roi_index] = int(np.count_nonzero(~tissue_ok))
        for k, f in zip(tile_index[tissue_ok], np.asarray(fraction)[tissue_ok]):
            members.append((k, roi_index, f * tissue_fraction[k]))
    members = np.asarray(members, dtype=np.float64).reshape(-1, 3)

    # Predict only tiles that some ROI uses; renumber them.
    used = np.unique(members[:, 0].astype(np.int64))
    remap = np.full(len(unique_boxes), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    if len(members):
        members[:, 0] = remap[members[:, 0].astype(np.int64)]
    return TilePlan(
        geometry=geometry,
        boxes_l0=unique_boxes[used].astype(np.int64),
        tissue_fraction=tissue_fraction[used],
        members=members,
        background_per_roi=background,
        n_rois=n_rois,
        roi_geometries=roi_geometries,
    )


def lies_outside(geometry, slide_wh: tuple[int, int]) -> bool:
    """Whether a geometry (level-0 px) lies wholly outside a slide of ``slide_wh`` px; an empty
    one (a whole tissue without any) does not."""
    import shapely

    return not geometry.is_empty and not geometry.intersects(shapely.box(0, 0, *slide_wh))


def _centred_box(roi, geometry: TileGeometry, slide_wh: tuple[int, int]) -> np.ndarray:
    """One tile centred on the ROI's bounding box, kept inside the slide."""
    minx, miny, maxx, maxy = roi.bounds
    t = geometry.tile_l0
    width, height = slide_wh
    x = round((minx + maxx) / 2 - t / 2)
    y = round((miny + maxy) / 2 - t / 2)
    x = min(max(x, 0), max(width - t, 0))
    y = min(max(y, 0), max(height - t, 0))
    return np.array([[x, y, t, t]], dtype=np.int64)
