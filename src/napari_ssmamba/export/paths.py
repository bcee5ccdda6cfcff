"""Where a slide's outputs go: ``<out_dir>/<stem>.<kind>``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def prepared_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Create ``out_dir`` and check that a file can be written in it, before any work is done; if
    the work fails while a folder made here is still empty, remove it again.

    Raises ``OSError`` naming the folder, the reason and the fix.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise OSError(
            f"{out_dir}: outputs cannot be written there ({exc.strerror or exc}); choose another "
            "output folder."
        ) from None
    try:
        yield out_dir
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def output_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """The path of every output of the slide ``stem``, keyed by kind (see ``OUTPUT_SUFFIXES``)."""
    out_dir = Path(out_dir)
    return {kind: out_dir / f"{stem}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}
