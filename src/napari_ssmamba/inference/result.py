"""What a classification run produces, in level-0 slide coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ssmamba.inference.heatmap import Grid
from napari_ssmamba.inference.tiling import TileGeometry, lies_outside


@dataclass
class RoiTiles:
    """The tiles one ROI uses and their predictions (what the per-ROI cache holds)."""

    boxes_l0: np.ndarray  # (n, 4) int64: minx, miny, width, height
    probabilities: np.ndarray  # (n, classes) float32
    weights: np.ndarray  # (n,) float64: ROI overlap fraction x tissue fraction
    tissue_fraction: np.ndarray  # (n,) float32
    attention: np.ndarray | None  # (n, a, a) float32
    n_background: int  # tiles skipped as background


@dataclass
class RoiResult:
    """One ROI's class: the tissue-weighted mean of its tiles' probabilities, and its argmax.

    ``class_index`` is None when the ROI holds no tissue tile.
    """

    geometry: object  # shapely geometry, level-0 px
    probabilities: np.ndarray  # (classes,)
    class_index: int | None
    class_name: str | None
    confidence: float
    n_tiles: int
    n_background_tiles: int
    annotation: object = None  # the Annotation it came from, if any
    tiles: RoiTiles | None = None

    @classmethod
    def from_tiles(cls, geometry, tiles: RoiTiles, class_names, annotation=None) -> RoiResult:
        num_classes = len(class_names)
        total = float(tiles.weights.sum())
        if len(tiles.boxes_l0) and total > 0:
            probabilities = (tiles.weights[:, None] * tiles.probabilities).sum(0) / total
            class_index = int(np.argmax(probabilities))
            class_name = class_names[class_index]
            confidence = float(probabilities[class_index])
        else:
            probabilities = np.zeros(num_classes, dtype=np.float64)
            class_index, class_name, confidence = None, None, 0.0
        return cls(
            geometry=geometry,
            probabilities=np.asarray(probabilities, dtype=np.float64),
            class_index=class_index,
            class_name=class_name,
            confidence=confidence,
            n_tiles=len(tiles.boxes_l0),
            n_background_tiles=int(tiles.n_background),
            annotation=annotation,
            tiles=tiles,
        )


@dataclass
class ClassificationResult:
    """Tiles, ROI classes, class heatmaps, the argmax label map and the LPR attention map of a slide.

    Maps live on :class:`~napari_ssmamba.inference.heatmap.Grid` s over level 0: ``heatmaps[c, i, j]`` is
    the mean probability of class ``c`` over the tiles covering cell ``(i, j)``; ``labels`` is 0 where
    no tile lies and ``1 + argmax`` elsewhere; ``attention`` is the LPR response averaged where tiles
    overlap. ``heatmap_grid.layer_transform(mpp)`` gives the napari scale and translate.
    """

    slide_path: Path | None
    slide_dimensions_wh: tuple[int, int]
    mpp_yx: tuple[float, float]
    card: object
    geometry: TileGeometry
    tile_boxes_l0: np.ndarray
    tile_probabilities: np.ndarray
    tile_tissue_fraction: np.ndarray
    rois: list[RoiResult]
    whole_tissue: bool
    heatmap_grid: Grid
    heatmaps: np.ndarray
    labels: np.ndarray
    attention_grid: Grid | None
    attention: np.ndarray | None
    parameters: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.card.class_names)

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return [tuple(int(v) for v in c) for c in self.card.class_colors]

    @property
    def untrained(self) -> bool:
        return bool(getattr(self.card, "untrained", False))

    @property
    def n_tiles(self) -> int:
        return len(self.tile_boxes_l0)

    @property
    def n_background_tiles(self) -> int:
        return int(sum(r.n_background_tiles for r in self.rois))

    def roi_label(self, index: int) -> str:
        """What ROI ``index`` is called in the legend, the figure and the exports: ``"Tissue"``
        for the whole tissue, else the annotation's name, else ``"ROI <index + 1>"``."""
        if self.whole_tissue:
            return "Tissue"
        return getattr(self.rois[index].annotation, "name", None) or f"ROI {index + 1}"

    def roi_verdict(self, index: int) -> str:
        """ROI ``index``'s class and confidence (``"tumour 0.87"``), or why it has none."""
        roi = self.rois[index]
        if roi.class_name is not None:
            return f"{roi.class_name} {roi.confidence:.2f}"
        if lies_outside(roi.geometry, self.slide_dimensions_wh):
            return "outside the slide"
        return "no tissue"

    @property
    def stem(self) -> str:
        """File stem of outputs: the slide's file name without its (possibly double) extension."""
        from napari_ssmamba.export.paths import slide_stem

        return "slide" if self.slide_path is None else slide_stem(self.slide_path)
