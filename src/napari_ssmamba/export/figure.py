"""A PNG figure of a classification: slide thumbnail, blended class heatmap, ROI outlines, legend
and scale bar. Drawn with PIL only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_ssmamba._atomic import atomic_path
from napari_ssmamba.export.tiff import render_heatmap_rgba

HEATMAP_ALPHA = 0.5
#: ROIs listed in the legend; the GeoJSON and the run record have them all
LEGEND_ROIS = 12
#: scale bar lengths to choose from, in µm
SCALE_BAR_UM = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def render_figure(result, thumbnail: np.ndarray, legend_width: int = 220):
    """The figure as a PIL image; ``thumbnail`` is an RGB image of the whole slide."""
    from PIL import Image, ImageDraw

    thumb = Image.fromarray(np.asarray(thumbnail)[..., :3].astype(np.uint8))
    tw, th = thumb.size
    width, height = result.slide_dimensions_wh
    sx, sy = tw / width, th / height

    rgba, cell = render_heatmap_rgba(result)
    # the cell under each thumbnail pixel's centre (a transparent one past the grid): the overlay
    # never grows beyond the thumbnail, however large the cells
    rgba = np.pad(rgba, ((0, 1), (0, 1), (0, 0)))
    rows = np.minimum(((np.arange(th) + 0.5) / sy // cell).astype(np.int64), rgba.shape[0] - 1)
    cols = np.minimum(((np.arange(tw) + 0.5) / sx // cell).astype(np.int64), rgba.shape[1] - 1)
    overlay = rgba[rows[:, None], cols[None, :]]
    alpha = overlay[..., 3:4].astype(np.float32) / 255.0 * HEATMAP_ALPHA
    blended = np.asarray(thumb, np.float32) * (1 - alpha) + overlay[..., :3] * alpha
    picture = Image.fromarray(blended.round().astype(np.uint8))
    outlines = ImageDraw.Draw(picture)  # drawn on the slide's picture: clipped to it
    font, small = _font(14), _font(12)
    for roi_index, roi in enumerate(result.rois):
        color = result.class_colors[roi.class_index] if roi.class_index is not None else (0, 0, 0)
        for polygon in getattr(roi.geometry, "geoms", [roi.geometry]):
            if polygon.is_empty or not hasattr(polygon, "exterior"):
                continue
            for ring in [polygon.exterior, *polygon.interiors]:
                xy = [(x * sx, y * sy) for x, y in ring.coords]
                outlines.line(xy, fill=tuple(color), width=2)
        if roi.annotation is not None and roi_index < LEGEND_ROIS and not roi.geometry.is_empty:
            # its name from the legend at its top-left corner, on white to be read on tissue
            x0, y0 = roi.geometry.bounds[0] * sx + 3, roi.geometry.bounds[1] * sy + 3
            box = outlines.textbbox((x0, y0), result.roi_label(roi_index), font=small)
            outlines.rectangle(box, fill="white")
            outlines.text((x0, y0), result.roi_label(roi_index), fill="black", font=small)
    listed = min(len(result.rois), LEGEND_ROIS) + (len(result.rois) > LEGEND_ROIS)
    legend_height = 42 + 20 * len(result.class_names) + 16 * listed + 50 * result.untrained
    canvas = Image.new("RGB", (tw + legend_width, max(th, legend_height, 200)), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)

    x0, y = tw + 12, 12
    draw.text((x0, y), "Classes", fill="black", font=font)
    y += 22
    for name, color in zip(result.class_names, result.class_colors):
        draw.rectangle([x0, y, x0 + 14, y + 14], fill=tuple(color), outline="black")
        draw.text((x0 + 22, y), name, fill="black", font=small)
        y += 20
    y += 8
    for roi_index in range(min(len(result.rois), LEGEND_ROIS)):
        text = f"{result.roi_label(roi_index)}: {result.roi_verdict(roi_index)}"
        draw.text((x0, y), text, fill="black", font=small)
        y += 16
    if len(result.rois) > LEGEND_ROIS:
        more = f"… and {len(result.rois) - LEGEND_ROIS} more ROIs (GeoJSON)"
        draw.text((x0, y), more, fill="black", font=small)
        y += 16
    if result.untrained:
        draw.text((x0, y + 8), "UNTRAINED MODEL:\nnot a result", fill=(200, 0, 0), font=font)

    um_per_px = result.mpp_yx[1] / sx
    target = tw * um_per_px / 5
    length_um = max([s for s in SCALE_BAR_UM if s <= target] or [SCALE_BAR_UM[0]])
    length_px = length_um / um_per_px
    bx, by = 12, th - 24
    draw.rectangle([bx - 4, by - 18, bx + length_px + 4, by + 8], fill="white")
    draw.rectangle([bx, by, bx + length_px, by + 5], fill="black")
    label = f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um} um"
    draw.text((bx, by - 16), label, fill="black", font=small)
    return canvas


def write_figure(result, path: str | os.PathLike, thumbnail: np.ndarray) -> Path:
    """Write the figure of ``result`` as a PNG, atomically."""
    path = Path(path)
    image = render_figure(result, thumbnail)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
