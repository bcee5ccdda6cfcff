"""Tissue detection on a low-resolution image of the slide.

The rule, kept simple so that it can be stated: a pixel is tissue when its *stain score*
``max(saturation, darkness)`` exceeds a threshold. Saturation (HSV) catches eosin, haematoxylin
and DAB; darkness (``1 - mean(RGB) / 255``) catches grey, weakly saturated tissue. The threshold is
Otsu's on the score, clamped to ``[min_threshold, max_threshold]`` so that a field that is all glass
or all tissue is not split in two. The lower clamp, 0.07, puts the grey glass of scanners
(mean RGB 237 and brighter, with sensor noise) below the threshold. Specks smaller than ``min_object_px`` are removed and holes
smaller than that are filled. Pen marks are not treated specially.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

#: stain score thresholds between which Otsu's threshold is clamped
MIN_THRESHOLD = 0.07
MAX_THRESHOLD = 0.15


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask on a regular grid laid over level 0.

    ``mask[i, j]`` covers level-0 pixels ``[i * downsample_yx[0], (i + 1) * downsample_yx[0])`` in y
    (and the same in x with ``downsample_yx[1]``).
    """

    mask: np.ndarray
    downsample_yx: tuple[float, float]

    def fraction_in_boxes(self, boxes_l0: np.ndarray) -> np.ndarray:
        """Share of tissue in each level-0 box ``(minx, miny, width, height)``, in [0, 1]."""
        boxes_l0 = np.asarray(boxes_l0, dtype=np.float64).reshape(-1, 4)
        if len(boxes_l0) == 0:
            return np.zeros(0, dtype=np.float32)
        h, w = self.mask.shape
        integral = self._integral
        dy, dx = self.downsample_yx
        x0 = np.clip(np.floor(boxes_l0[:, 0] / dx), 0, w).astype(np.int64)
        y0 = np.clip(np.floor(boxes_l0[:, 1] / dy), 0, h).astype(np.int64)
        x1 = np.clip(np.ceil((boxes_l0[:, 0] + boxes_l0[:, 2]) / dx), 0, w).astype(np.int64)
        y1 = np.clip(np.ceil((boxes_l0[:, 1] + boxes_l0[:, 3]) / dy), 0, h).astype(np.int64)
        tissue = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        # Cells of the box that fall off the slide count as background.
        cells_x = np.ceil((boxes_l0[:, 0] + boxes_l0[:, 2]) / dx) - np.floor(boxes_l0[:, 0] / dx)
        cells_y = np.ceil((boxes_l0[:, 1] + boxes_l0[:, 3]) / dy) - np.floor(boxes_l0[:, 1] / dy)
        return np.clip(tissue / np.maximum(cells_x * cells_y, 1), 0.0, 1.0).astype(np.float32)

    @functools.cached_property
    def _integral(self) -> np.ndarray:
        """Tissue cells above and left of each corner: summed once per mask, not per call."""
        h, w = self.mask.shape
        integral = np.zeros((h + 1, w + 1), dtype=np.int64)
        integral[1:, 1:] = np.cumsum(np.cumsum(self.mask, axis=0), axis=1)
        return integral


def stain_score(rgb: np.ndarray) -> np.ndarray:
    """``max(saturation, darkness)`` of an (h, w, 3) uint8 image, as float32 in [0, 1]."""
    rgb = np.asarray(rgb)
    # channel by channel: numpy reduces a trailing axis of 3 slowly
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    cmax = np.maximum(np.maximum(r, g), b)
    cmin = np.minimum(np.minimum(r, g), b)
    saturation = (cmax - cmin) / np.maximum(cmax, 1e-6)  # 0 where cmax == 0
    darkness = 1.0 - (r + g + b) / (3 * 255.0)
    return np.maximum(saturation, darkness, out=saturation)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]."""
    index = np.clip((np.ravel(values) * bins).astype(np.int64), 0, bins - 1)
    hist = np.bincount(index, minlength=bins).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centers) / np.maximum(weight_low, 1)
    mean_high = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][np.argmax(between)])


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    min_threshold: float = MIN_THRESHOLD,
    max_threshold: float = MAX_THRESHOLD,
    min_object_px: int = 16,
) -> np.ndarray:
    """Boolean tissue mask of an RGB image (the rule is in this module's docstring)."""
    from scipy import ndimage

    score = stain_score(rgb)
    score = ndimage.median_filter(score, size=3)
    threshold = float(np.clip(otsu_threshold(score), min_threshold, max_threshold))
    mask = score > threshold
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_object_px
        keep[0] = False
        mask = keep[labels]
    holes, n = ndimage.label(~mask)
    if n:
        sizes = np.bincount(holes.ravel())
        # Holes that touch the border are background, whatever their size.
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        fill = sizes < min_object_px
        fill[0] = False
        fill[border] = False
        mask = mask | fill[holes]
    return mask


def detect_tissue(slide, max_size: int = 2048, **kwargs) -> TissueMask:
    """Tissue mask of ``slide`` from a thumbnail whose long side is at most ``max_size`` px."""
    thumbnail = np.asarray(slide.get_thumbnail(max_size))
    width, height = slide.dimensions
    mask = tissue_mask_from_rgb(thumbnail, **kwargs)
    return TissueMask(mask, (height / mask.shape[0], width / mask.shape[1]))
