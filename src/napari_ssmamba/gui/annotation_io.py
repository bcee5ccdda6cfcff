"""npe2 reader and writer for QuPath GeoJSON annotation files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from napari_ssmamba.annotations import read_geojson
from napari_ssmamba.annotations import write_geojson as write_annotations
from napari_ssmamba.gui.layers import (
    LayerDataTuple,
    annotations_in_slide_frame,
    annotations_to_layer_data,
    in_slide_frame,
    layer_to_annotations,
)
from napari_ssmamba.gui.slide_reader import annotation_frame_layer, is_slide_layer

__all__ = ["get_geojson_reader", "read_geojson_layers", "write_geojson"]

# A plain .json file is claimed only when its start looks like GeoJSON.
_GEOJSON_START = re.compile(
    rb'"type"\s*:\s*"(FeatureCollection|Feature|Polygon|MultiPolygon|Point|MultiPoint|'
    rb'LineString|MultiLineString|GeometryCollection)"'
)


def get_geojson_reader(path: str | list[str]):
    """The reader for ``path`` if it is GeoJSON: ``*.geojson``, or ``*.json`` that looks like it."""
    paths = [path] if isinstance(path, str) else list(path)
    if paths and all(_is_geojson(Path(p)) for p in paths):
        return read_geojson_layers
    return None


def _is_geojson(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".geojson":
        return True
    if suffix != ".json" or not path.is_file():
        return False
    with open(path, "rb") as fh:
        return _GEOJSON_START.search(fh.read(65536)) is not None


def read_geojson_layers(path: str | list[str]) -> list[LayerDataTuple]:
    """Shapes and points layers for QuPath GeoJSON files, placed on the slide open in napari.

    Geometry repairs show as warnings (napari notifications); unreadable files raise
    ``AnnotationError`` with the reason. The layers take the scale and translation of the
    current viewer's slide (level-0 pixels, µm scale; see ``annotation_frame_layer``), else 1 px.
    """
    from napari.utils.notifications import show_error

    from napari_ssmamba.errors import AnnotationError

    paths = [path] if isinstance(path, str) else list(path)
    frame_layer = _current_frame_layer()
    scale, translate = _frame_of(frame_layer)
    layers = []
    for p in paths:
        p = Path(p)
        try:
            annotations = read_geojson(p)
        except AnnotationError as exc:
            show_error(str(exc))  # napari's own message only says the reader failed
            raise
        if frame_layer is not None and is_slide_layer(frame_layer):
            _warn_if_outside(p, annotations, frame_layer)
        layer_data = annotations_to_layer_data(
            annotations, mpp=scale, name=p.stem, translate=translate or (0.0, 0.0)
        )
        for _, meta, _ in layer_data:
            meta["metadata"]["napari_ssmamba"]["source"] = str(p)
        layers.extend(layer_data)
    return layers


def _warn_if_outside(path: Path, annotations, slide_layer) -> None:
    """Warn when annotations lie wholly outside the slide they are laid on: drawn on another
    image, most likely."""
    import warnings

    from napari_ssmamba.inference.tiling import lies_outside

    slide = slide_layer.metadata["slide"]
    outside = sum(lies_outside(a.geometry, slide.dimensions) for a in annotations)
    if outside:
        warnings.warn(
            f"{path.name}: {outside} of {len(annotations)} objects lie wholly outside "
            f"{slide_layer.name} ({slide.dimensions[0]} x {slide.dimensions[1]} px); were they "
            "drawn on another image?",
            stacklevel=2,
        )


def _frame_of(slide) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """(scale, translate) of the layer annotations go on: scale None at 1 px, both None
    without a layer."""
    if slide is None:
        return None, None
    scale = tuple(float(s) for s in slide.scale[-2:])
    translate = tuple(float(t) for t in slide.translate[-2:])
    return (None if scale == (1.0, 1.0) else scale), translate


def _current_frame_layer():
    import napari

    viewer = napari.current_viewer()
    return None if viewer is None else annotation_frame_layer(viewer)


def write_geojson(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Write shapes and points layers to ``path`` as one QuPath GeoJSON FeatureCollection, in
    level-0 slide pixels: a layer in a slide's frame (scale and translate) as it is, one in
    another frame mapped onto the slide open in napari (see ``annotation_frame_layer``)."""
    import napari
    from napari.layers import Layer

    viewer = napari.current_viewer()
    slides = [] if viewer is None else [lr for lr in viewer.layers if is_slide_layer(lr)]
    current = None if viewer is None else annotation_frame_layer(viewer)
    annotations = []
    for data, meta, layer_type in layer_data:
        layer = Layer.create(data, meta, layer_type)
        slide = next((s for s in slides if in_slide_frame(layer, s)), current)
        if slide is None:
            annotations.extend(layer_to_annotations(layer))
        else:
            annotations.extend(annotations_in_slide_frame(layer, slide))
    write_annotations(annotations, path)
    return [str(path)]
