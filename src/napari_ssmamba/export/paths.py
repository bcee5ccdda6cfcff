"""Where a slide's outputs go: ``<out_dir>/<stem>.<kind>``."""

from __future__ import annotations

import os
from pathlib import Path

#: output kind -> file suffix; "run" (the run record) is written last
OUTPUT_SUFFIXES = {
    "geojson": ".geojson",
    "heatmap": ".heatmap.tif",
    "figure": ".png",
    "tiles": ".tiles.csv",
    "run": ".run.json",
}

_DOUBLE_SUFFIXES = (".ome.tiff", ".ome.tif")


def slide_stem(slide_path: str | os.PathLike) -> str:
    """The slide's file name without its extension (``.ome.tif`` counts as one)."""
    name = Path(slide_path).name
    for suffix in _DOUBLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def output_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """The path of every output of the slide ``stem``, keyed by kind (see ``OUTPUT_SUFFIXES``)."""
    out_dir = Path(out_dir)
    return {kind: out_dir / f"{stem}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}
