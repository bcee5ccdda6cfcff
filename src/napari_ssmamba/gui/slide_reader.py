"""napari reader for whole-slide images: one multiscale image layer per slide (one per channel
for multiplexed slides), scaled in micrometres from the slide's MPP."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np

from napari_ssmamba.slide import SLIDE_SUFFIXES, VENDOR_SUFFIXES, Slide, SlideError, open_slide

logger = logging.getLogger(__name__)

MICRONS = "um"
PIXELS = "pixel"
MISSING_MPP_HINT = ("shown in pixels. Set its pixel size in Plugins > SSMamba WSI > Settings "
                    "(Set MPP) to get a scale bar in µm")


def get_slide_reader(path: str | list[str]):
    """npe2 reader contribution: a reader for ``path`` if it is a slide we can open, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not str(path).lower().endswith(SLIDE_SUFFIXES):
        return None
    try:
        slide = open_slide(path)
    except SlideError as exc:
        if str(path).lower().endswith(VENDOR_SUFFIXES) and Path(path).is_file():
            # no other reader knows these: say why, instead of napari's "no reader"
            return functools.partial(_report_unreadable, exc)
        # a TIFF or DICOM file that is not a slide: another reader may know it
        logger.info("napari-ssmamba does not read %s: %s", path, exc)
        return None
    return functools.partial(_read_slide, slide)


def _report_unreadable(error: SlideError, path) -> list:
    """Show the reason a vendor slide cannot be opened (napari's own message is generic)."""
    from napari.utils.notifications import show_error

    show_error(str(error))
    raise error


def _read_slide(slide: Slide, path) -> list[tuple]:
    if slide.mpp is None:
        warnings.warn(f"{slide.path.name} has no pixel size (MPP) in its metadata: "
                      f"{MISSING_MPP_HINT}.", stacklevel=2)
    return slide_layer_data(slide)


def slide_layer_data(slide: Slide, name: str | None = None) -> list[tuple]:
    """napari layer data for ``slide``: a multiscale image of its levels (level 0 first).

    The layer holds ``slide.level_readers``, the tile readers under ``slide.levels``: napari
    slices the visible region and gets numpy back, without dask's graph overhead (about 10x
    faster per view on a 100,000 px slide) or napari's unbounded dask cache. The dask levels
    are one attribute away, ``layer.metadata["slide"].levels``.
    """
    name = name or slide.path.name
    scale = slide.mpp if slide.mpp is not None else (1.0, 1.0)
    units = MICRONS if slide.mpp is not None else PIXELS
    kwargs = {
        "name": name,
        "multiscale": True,
        "scale": tuple(scale),
        "units": (units, units),
        "metadata": {
            "slide_path": str(slide.path),
            "mpp": slide.mpp,
            "vendor": slide.vendor,
            "slide": slide,
        },
    }
    levels = slide.level_readers
    if _is_our_heatmap(slide):
        # white where nothing was classified: multiplied with the slide under it, white leaves
        # the tissue as it is and the class colours tint it
        kwargs["metadata"]["heatmap"] = True
        kwargs.update(rgb=True, blending="multiplicative", opacity=0.7)
        return [(levels, kwargs, "image")]
    if slide.is_rgb:
        kwargs.update(rgb=True, contrast_limits=_dtype_range(slide.dtype))
        return [(levels, kwargs, "image")]
    # fluorescence: one layer per channel, in the file's colours, added together
    names = slide.channel_names or ["Channel 0"]
    colors = slide.channel_colors or [None] * slide.channel_count
    overview = np.asarray(levels[-1])
    layers = []
    for c, (channel, color) in enumerate(zip(names, colors)):
        channel_kwargs = {
            **kwargs,
            "name": name if slide.channel_count == 1 else f"{name} [{channel}]",
            "rgb": False,
            "colormap": "gray" if slide.channel_count == 1 else _colormap(channel, color, c),
            "contrast_limits": _channel_limits(overview[..., c]),
            "blending": "translucent" if c == 0 else "additive",
        }
        layers.append(([_Channel(level, c) for level in levels], channel_kwargs, "image"))
    return layers


class _Channel:
    """One channel of a level reader, as a 2D array for napari."""

    ndim = 2

    def __init__(self, reader, channel: int):
        self.reader = reader
        self.channel = channel
        self.shape = reader.shape[:2]
        self.dtype = reader.dtype

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.reader, dtype=dtype)[..., self.channel]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return self.reader[(*key, self.channel)]


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return (float(info.min), float(info.max))
    return (0.0, 1.0)


def _channel_limits(channel) -> tuple[float, float]:
    """Contrast limits from the overview: the 0.1 and 99.9 percentiles, never a zero range."""
    values = np.asarray(channel)
    low, high = (float(v) for v in np.percentile(values, (0.1, 99.9)))
    if high <= low:
        high = low + 1
    return (low, high)


_NAMED_COLORMAPS = {(255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue",
                    (0, 255, 255): "cyan", (255, 0, 255): "magenta", (255, 255, 0): "yellow",
                    (255, 255, 255): "gray"}
_CYCLE = ("blue", "green", "red", "magenta", "cyan", "yellow")


def _colormap(channel: str, color: tuple[int, int, int] | None, index: int):
    """napari colormap for a fluorescence channel: its file colour, else a cycled one."""
    if color is None:
        return _CYCLE[index % len(_CYCLE)]
    if tuple(color) in _NAMED_COLORMAPS:
        return _NAMED_COLORMAPS[tuple(color)]
    from napari.utils.colormaps import Colormap

    rgb = [c / 255 for c in color]
    return Colormap([[0, 0, 0, 1], [*rgb, 1]], name=f"{channel} {tuple(color)}")


def set_layer_mpp(layer, mpp: tuple[float, float], drawn_over=()) -> None:
    """Give a slide layer a pixel size: scale (µm per level-0 px), units, metadata, and the
    Slide object it shows. The ``drawn_over`` layers (ROIs, results) are scaled with it about
    its origin, so they stay on the same tissue."""
    mpp = (float(mpp[0]), float(mpp[1]))
    factor = np.asarray(mpp) / np.asarray(layer.scale[-2:], dtype=float)
    origin = np.asarray(layer.translate[-2:], dtype=float)
    for other in drawn_over:
        translate = origin + (np.asarray(other.translate[-2:], dtype=float) - origin) * factor
        other.scale = (*other.scale[:-2], *(np.asarray(other.scale[-2:]) * factor))
        other.translate = (*other.translate[:-2], *translate)
        other.units = (*other.units[:-2], MICRONS, MICRONS)
    layer.metadata["mpp"] = mpp
    slide = layer.metadata.get("slide")
    if isinstance(slide, Slide):  # before the scale: its event makes widgets prepare a run
        slide.mpp = mpp
    layer.scale = (*layer.scale[:-2], *mpp)
    layer.units = (*layer.units[:-2], MICRONS, MICRONS)


def fit_drawn_layers_to_slides(layers) -> None:
    """Make shapes and points layers drawn over a slide fit it: µm units, and outlines.

    A slide layer puts napari's world in µm; a layer drawn with napari's buttons has its data
    scaled into that world but keeps pixel units, so napari warns "Inconsistent units across
    layers" and the scale bar loses its µm. Its world coordinates are µm all the same: say so.
    (napari runs plugins' callbacks after its own, so its warning still shows once per such layer.)
    A new shapes layer also fills what is drawn in it white, hiding the tissue being outlined:
    it draws outlines instead, in QuPath's default red, wide enough to see on the slide.
    """
    slides = [layer for layer in layers if is_slide_layer(layer)]
    if not slides:
        return
    from napari.layers import Points, Shapes

    from napari_ssmamba.gui.layers import annotation_edge_width

    in_microns = any(str(layer.units[-1]) in ("micrometer", MICRONS) for layer in slides)
    slide_extent = max(max(layer.metadata["slide"].dimensions) for layer in slides)
    for layer in layers:
        if not isinstance(layer, (Shapes, Points)):
            continue
        if in_microns and all(str(unit) == PIXELS for unit in layer.units):
            layer.units = (*layer.units[:-2], MICRONS, MICRONS)
        if isinstance(layer, Shapes) and layer.nshapes == 0 and _has_napari_fill(layer):
            layer.current_face_color = "transparent"
            layer.current_edge_color = "#ff0000"
            layer.current_edge_width = annotation_edge_width(slide_extent)
            layer.opacity = 1.0


def _has_napari_fill(layer) -> bool:
    """Whether a shapes layer still fills new shapes with napari's default opaque white."""
    from napari.utils.colormaps.standardize_color import transform_color

    return bool(np.allclose(transform_color(layer.current_face_color), 1.0))


def annotation_frame_layer(viewer):
    """The layer whose level-0 pixels annotations are placed in: the selected slide layer, else
    the top-most slide layer, else the top-most image layer; None without any. (Once a run has
    shown its results, the top-most image layer is a heatmap, not the slide.)"""
    from napari.layers import Image

    slides = [layer for layer in viewer.layers if is_slide_layer(layer)]
    selected = [layer for layer in slides if layer in viewer.layers.selection]
    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    return (selected or slides or images or [None])[-1]


def is_slide_layer(layer) -> bool:
    """Whether ``layer`` shows a slide opened by this plugin's reader (not a heatmap TIFF we
    wrote, which is laid over one)."""
    metadata = getattr(layer, "metadata", None)
    return metadata is not None and "slide_path" in metadata and not metadata.get("heatmap")


def _is_our_heatmap(slide: Slide) -> bool:
    from napari_ssmamba.export.tiff import HEATMAP_DESCRIPTION

    description = slide.properties.get("tiff.ImageDescription") or ""
    return slide.is_rgb and description.startswith(HEATMAP_DESCRIPTION)
