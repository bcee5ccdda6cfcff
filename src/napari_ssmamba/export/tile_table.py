"""The per-tile CSV: ``minx,miny,width,height,prob_<class>...`` in level-0 px (WSInfer's layout)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from napari_ssmamba._atomic import atomic_open


def write_tile_csv(result, path: str | os.PathLike) -> Path:
    """One row per predicted tile, atomically."""
    path = Path(path)
    header = ["minx", "miny", "width", "height"] + [f"prob_{c}" for c in result.class_names]
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for box, probs in zip(result.tile_boxes_l0, result.tile_probabilities):
            writer.writerow([int(v) for v in box] + [f"{p:.6f}" for p in probs])
    return path
