"""Sample data: the CC0 CMU-1-Small-Region.svs slide shipped with the package."""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
from pathlib import Path

from napari_ssmamba.gui.slide_reader import slide_layer_data
from napari_ssmamba.slide import open_slide

SAMPLE_SLIDE = "CMU-1-Small-Region.svs"
_resources = contextlib.ExitStack()
atexit.register(_resources.close)


def sample_slide_path() -> Path:
    """A file-system path of the bundled sample slide (extracted once if the package is zipped)."""
    resource = importlib.resources.files("napari_ssmamba") / "data" / SAMPLE_SLIDE
    return _resources.enter_context(importlib.resources.as_file(resource))


def cmu1_small_region() -> list[tuple]:
    """CMU-1-Small-Region (Aperio SVS, H&E, 2220 x 2967 px at 0.499 µm/px) as napari layer data."""
    return slide_layer_data(open_slide(sample_slide_path()), name="CMU-1-Small-Region")
