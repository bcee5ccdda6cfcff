"""Results as QuPath objects: ROIs as classified annotations, tiles as detections.

ROI measurements: ``prob_<class>`` (the ROI's tissue-weighted mean probability), ``confidence``,
``n_tiles`` and ``n_background_tiles``, beside the ROI's own; an ROI without tissue (or outside
the slide) has no probabilities and no confidence rather than zeros. An ROI that had a class keeps
it in QuPath's object metadata as ``input_class``, since its classification becomes the predicted
class; an ROI without a prediction keeps its class and colour as they were. An ROI read back from
an earlier result loses that result's measurements and keeps its ``input_class`` as its own class.
ROIs keep their own names (the whole tissue is "Tissue").
Tile measurements: ``prob_<class>`` and ``tissue_fraction``.

Objects made here (tiles, the whole tissue, drawn ROIs without an id) get ids derived from the
slide's name and their place, so that two runs of the same job write the same file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

#: the measurements a result writes on an ROI (with ``prob_<class>``)
RESULT_MEASUREMENTS = ("confidence", "n_tiles", "n_background_tiles")


def _own_class(source) -> str | None:
    """The class the pathologist gave an ROI. An ROI read back from one of our results carries a
    prediction as its classification and its own class as ``input_class``."""
    metadata = source.extra_properties.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    if "input_class" in metadata or "confidence" in source.measurements:
        return metadata.get("input_class")
    return source.class_name


def _own_measurements(source) -> dict:
    """The ROI's measurements without those of an earlier result."""
    return {
        key: value
        for key, value in source.measurements.items()
        if not key.startswith("prob_") and key not in RESULT_MEASUREMENTS
    }


def _properties_kept(source, own_class: str | None) -> dict:
    """The ROI's own extra properties, with its own class (if any) in QuPath's object metadata."""
    properties = dict(source.extra_properties)
    metadata = properties.get("metadata")
    metadata = (
        {k: v for k, v in metadata.items() if k != "input_class"}
        if isinstance(metadata, dict)
        else {}
    )
    if own_class:
        metadata["input_class"] = own_class
    if metadata:
        properties["metadata"] = metadata
    else:
        properties.pop("metadata", None)
    return properties


def result_annotations(result, tiles: bool = True) -> list:
    """The ROIs (and tiles) of ``result`` as :class:`~napari_ssmamba.annotations.Annotation` s."""
    from napari_ssmamba.annotations import Annotation
    from napari_ssmamba.annotations.colors import default_class_color
    from napari_ssmamba.inference.tiling import boxes_to_polygons

    names, colors = result.class_names, result.class_colors
    out = []
    for index, roi in enumerate(result.rois):
        if roi.geometry is None or roi.geometry.is_empty:  # whole tissue with no tissue tile
            continue
        measurements = {}
        if roi.class_index is not None:
            measurements = {f"prob_{c}": float(p) for c, p in zip(names, roi.probabilities)}
            measurements["confidence"] = float(roi.confidence)
        measurements.update(
            n_tiles=int(roi.n_tiles), n_background_tiles=int(roi.n_background_tiles)
        )
        source = roi.annotation if hasattr(roi.annotation, "geometry") else None
        own = None if source is None else _own_class(source)
        if roi.class_index is not None:
            fields = {"class_name": roi.class_name, "color": colors[roi.class_index]}
        elif own:  # nothing to predict from: the ROI keeps its own class
            color = source.color if own == source.class_name else default_class_color(own)
            fields = {"class_name": own, "color": color}
        else:
            fields = {}
        if source is None:
            fields |= {"name": result.roi_label(index), "id": _stable_id(result, roi.geometry.wkt)}
        else:
            fields |= {
                "name": source.name,
                "id": source.id,
                "is_ellipse": source.is_ellipse,
                "locked": source.locked,
                "extra_properties": _properties_kept(source, own),
            }
            measurements = _own_measurements(source) | measurements
        out.append(
            Annotation(
                geometry=roi.geometry,
                object_type="annotation",
                measurements=measurements,
                **fields,
            )
        )
    if tiles:
        boxes = result.tile_boxes_l0
        polygons = boxes_to_polygons(boxes)
        for box, polygon, probs, tissue in zip(
            boxes, polygons, result.tile_probabilities, result.tile_tissue_fraction
        ):
            k = int(np.argmax(probs))
            measurements = {f"prob_{c}": float(p) for c, p in zip(names, probs)}
            measurements["tissue_fraction"] = float(tissue)
            out.append(
                Annotation(
                    geometry=polygon,
                    object_type="detection",
                    class_name=names[k],
                    color=colors[k],
                    measurements=measurements,
                    id=_stable_id(result, "tile {} {} {} {}".format(*box)),
                )
            )
    return out


def _stable_id(result, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari-ssmamba:{result.stem}:{what}"))


def write_result_geojson(result, path: str | os.PathLike) -> Path:
    """Write ``result`` as QuPath GeoJSON (atomic, through annotations.write_geojson)."""
    from napari_ssmamba.annotations import write_geojson

    return write_geojson(result_annotations(result), Path(path))
