"""Tissue detection, tiling at the model's MPP, batched prediction, heatmaps and attention maps.

Everything here works in level-0 slide coordinates and without napari. Names are imported lazily so
that ``import napari_ssmamba.inference`` stays cheap.
"""

from __future__ import annotations

from napari_ssmamba._lazy import lazy_getattr

_EXPORTS = {
    "classify_slide": "classify",
    "run_slide": "classify",
    "load_rois": "classify",
    "ClassificationCache": "classify",
    "warm_up": "classify",
    "ClassificationResult": "result",
    "RoiResult": "result",
    "RoiTiles": "result",
    "Grid": "heatmap",
    "TissueMask": "tissue",
    "detect_tissue": "tissue",
    "tissue_mask_from_rgb": "tissue",
    "TileGeometry": "tiling",
    "TilePlan": "tiling",
    "choose_level": "tiling",
    "plan_tiles": "tiling",
    "tile_geometry": "tiling",
    "predict_tiles": "predict",
    "SlideTileReader": "predict",
}

__all__ = [
    "ClassificationCache",
    "ClassificationResult",
    "Grid",
    "RoiResult",
    "RoiTiles",
    "SlideTileReader",
    "TileGeometry",
    "TilePlan",
    "TissueMask",
    "choose_level",
    "classify_slide",
    "detect_tissue",
    "load_rois",
    "plan_tiles",
    "predict_tiles",
    "run_slide",
    "tile_geometry",
    "tissue_mask_from_rgb",
    "warm_up",
]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
