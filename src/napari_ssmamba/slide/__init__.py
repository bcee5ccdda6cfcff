"""Whole-slide images as pyramids of lazy dask arrays, through OpenSlide or tifffile.

``open_slide(path, mpp=None) -> Slide``. Importing this package is cheap: OpenSlide, tifffile and
dask are imported when a slide is opened.
"""

from napari_ssmamba._lazy import lazy_getattr
from napari_ssmamba.errors import SlideError
from napari_ssmamba.slide.factory import SLIDE_SUFFIXES, VENDOR_SUFFIXES, open_slide
from napari_ssmamba.slide.properties import (
    PROPERTY_BACKGROUND_COLOR,
    PROPERTY_COMMENT,
    PROPERTY_MPP_X,
    PROPERTY_MPP_Y,
    PROPERTY_OBJECTIVE_POWER,
    PROPERTY_VENDOR,
)
from napari_ssmamba.slide.slide import MIN_OVERVIEW_SIDE, LevelReader, Slide

__all__ = [
    "MIN_OVERVIEW_SIDE",
    "PROPERTY_BACKGROUND_COLOR",
    "PROPERTY_COMMENT",
    "PROPERTY_MPP_X",
    "PROPERTY_MPP_Y",
    "PROPERTY_OBJECTIVE_POWER",
    "PROPERTY_VENDOR",
    "SLIDE_SUFFIXES",
    "VENDOR_SUFFIXES",
    "LevelReader",
    "OpenSlideSlide",
    "Slide",
    "SlideError",
    "TiffSlide",
    "open_slide",
]


# the backend classes import their modules on first use
__getattr__ = lazy_getattr(__name__, {"OpenSlideSlide": "openslide_slide", "TiffSlide": "tiff_slide"})
