"""``write_outputs``: every export of one slide, the run record last."""

from __future__ import annotations

import os
from pathlib import Path

from napari_ssmamba.export.paths import output_paths

FIGURE_SIZE = 1024


def write_outputs(
    result,
    out_dir: str | os.PathLike,
    run_info: dict | None = None,
    slide=None,
    thumbnail=None,
    kinds=("geojson", "heatmap", "figure", "tiles"),
) -> dict[str, Path]:
    """Write GeoJSON, heatmap TIFF, PNG figure and tile CSV of ``result``, then its run record.

    ``kinds`` picks a subset of the four; the run record lists what was written. The figure's thumbnail comes from ``thumbnail``, else from ``slide``, else from opening
    ``result.slide_path``. A stale run record is removed first, so a run that fails midway never
    leaves a record that claims completion. Returns kind -> path.
    """
    from napari_ssmamba.export.figure import write_figure
    from napari_ssmamba.export.geojson import write_result_geojson
    from napari_ssmamba.export.record import run_record, write_run_record
    from napari_ssmamba.export.tiff import write_heatmap_tiff
    from napari_ssmamba.export.tile_table import write_tile_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir, result.stem)
    paths["run"].unlink(missing_ok=True)

    unknown = set(kinds) - {"geojson", "heatmap", "figure", "tiles"}
    if unknown:
        raise ValueError(f"unknown output kinds {sorted(unknown)}")
    written = {}
    if "geojson" in kinds:
        written["geojson"] = write_result_geojson(result, paths["geojson"])
    if "heatmap" in kinds:
        written["heatmap"] = write_heatmap_tiff(result, paths["heatmap"])
    if "figure" in kinds:
        if thumbnail is None:
            thumbnail = _thumbnail(result, slide)
        written["figure"] = write_figure(result, paths["figure"], thumbnail)
    if "tiles" in kinds:
        written["tiles"] = write_tile_csv(result, paths["tiles"])
    write_run_record(run_record(result, written, run_info), paths["run"])
    written["run"] = paths["run"]
    return written


def _thumbnail(result, slide):
    if slide is not None:
        return slide.get_thumbnail(FIGURE_SIZE)
    from napari_ssmamba.slide import open_slide

    with open_slide(result.slide_path, mpp=result.mpp_yx) as opened:
        return opened.get_thumbnail(FIGURE_SIZE)
