"""Exports of a classification: QuPath GeoJSON, pyramidal heatmap TIFF, PNG figure, tile CSV, run record.

Every file is written atomically; the run record is written last and lists the sha256 of every other
output, so its presence with matching hashes marks a slide as complete. Names are imported lazily.
"""

from __future__ import annotations

from napari_ssmamba._lazy import lazy_getattr

_EXPORTS = {
    "write_outputs": "outputs",
    "output_paths": "paths",
    "prepared_output_dir": "paths",
    "slide_stem": "paths",
    "outputs_complete": "record",
    "record_summary": "record",
    "run_record": "record",
    "write_run_record": "record",
    "result_annotations": "geojson",
    "write_result_geojson": "geojson",
    "write_pyramidal_tiff": "tiff",
    "write_heatmap_tiff": "tiff",
    "render_heatmap_rgba": "tiff",
    "write_figure": "figure",
    "render_figure": "figure",
    "write_tile_csv": "tile_table",
}

__all__ = [
    "output_paths",
    "outputs_complete",
    "prepared_output_dir",
    "record_summary",
    "render_figure",
    "render_heatmap_rgba",
    "result_annotations",
    "run_record",
    "slide_stem",
    "write_figure",
    "write_heatmap_tiff",
    "write_outputs",
    "write_pyramidal_tiff",
    "write_result_geojson",
    "write_run_record",
    "write_tile_csv",
]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
