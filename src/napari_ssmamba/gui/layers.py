"""Annotations <-> napari layers: shapes and points with one feature row per drawn shape.

napari shapes hold ``(y, x)`` vertices in data coordinates, which here are level-0 slide pixels;
the layer's ``scale`` carries the MPP. One :class:`~napari_ssmamba.annotations.Annotation` may
need several rows: a MultiPolygon is one polygon row per part, and since napari shapes have no
holes, each hole is an extra closed ``path`` row with ``role == "hole"``. Rows of one annotation
are consecutive and share its ``id``.

Feature columns (the contract other widgets rely on):

``id``            UUID of the annotation ("" for a shape drawn in napari: it gets a new one)
``object_type``   "annotation", "detection", "cell", "tile", "tmaCore" ("" means "annotation")
``class_name``    QuPath class ("" for none); derived classes as "Tumor: Positive"
``color``         the class colour as "#rrggbb" ("" = QuPath's default for the class)
``name``          the object's name ("" for none)
``locked``, ``is_ellipse``  QuPath's flags
``role``          "" for the shape itself, "hole" for a hole's outline
``part``          the row's index within its annotation (0, 1, ...): a copy pasted in napari
                  starts again at 0 or repeats an index, and so becomes an annotation of its own
``geometry``      the full geometry as WKT in level-0 px: kept exactly while the shapes are not
                  edited, so holes, parts and precision survive a round trip
``nucleus_geometry``, ``plane``, ``properties``   cell nuclei (WKT), QuPath's plane and other
                  properties (JSON)
any other numeric column   a measurement (NaN = absent)

To label shapes, set ``class_name`` (and ``color``) in ``layer.features``; then
:func:`layer_to_annotations` turns the layer back into Annotations.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_ssmamba.annotations import (
    DETECTION_TYPES,
    Annotation,
    AnnotationRepairWarning,
    from_hex,
    new_id,
    repair_geometry,
    to_hex,
)
from napari_ssmamba.errors import AnnotationError

__all__ = [
    "FEATURE_COLUMNS",
    "LayerDataTuple",
    "align_to_layer",
    "annotations_to_layer_data",
    "layer_to_annotations",
]

LayerDataTuple = tuple[Any, dict, str]

#: The feature columns with a fixed meaning; every other numeric column is a measurement.
FEATURE_COLUMNS = (
    "id",
    "object_type",
    "class_name",
    "color",
    "name",
    "locked",
    "is_ellipse",
    "role",
    "part",
    "geometry",
    "nucleus_geometry",
    "plane",
    "properties",
)

_DEFAULTS = {name: "" for name in FEATURE_COLUMNS} | {
    "locked": False,
    "is_ellipse": False,
    "part": 0,
}
_POLYGON_TYPES = ("polygon", "rectangle", "ellipse")
_FACE_ALPHA = 0.25
_ELLIPSE_VERTICES = 72


# --------------------------------------------------------------------------------------------
# Annotations -> layers


def annotations_to_layer_data(
    annotations: Sequence[Annotation],
    mpp: tuple[float, float] | None = None,
    *,
    name: str = "annotations",
    translate: tuple[float, float] = (0.0, 0.0),
) -> list[LayerDataTuple]:
    """napari layer-data tuples for ``annotations``.

    Annotations become a shapes layer ``name``; cells a shapes layer ``"<name> cells"``; other
    detections and tiles ``"<name> detections"``; annotations made only of points a points layer
    ``"<name> points"``. Empty groups give no layer (an empty input gives one empty shapes
    layer to draw in). ``mpp`` is ``(mpp_y, mpp_x)`` in µm/px and becomes the layers' ``scale``
    (1 px without it); ``translate`` is in the same units as the scale.
    """
    groups: dict[str, list[Annotation]] = {
        "annotations": [],
        "cells": [],
        "detections": [],
        "points": [],
    }
    for annotation in annotations:
        if _is_points_only(annotation.geometry):
            groups["points"].append(annotation)
        elif annotation.object_type == "cell":
            groups["cells"].append(annotation)
        elif annotation.object_type in DETECTION_TYPES:
            groups["detections"].append(annotation)
        else:
            groups["annotations"].append(annotation)

    scale = tuple(float(s) for s in mpp) if mpp is not None else (1.0, 1.0)
    frame = {"scale": scale, "translate": tuple(float(t) for t in translate)}
    if mpp is not None:
        frame["units"] = ("um", "um")
    extent = _extent(annotations)
    layers: list[LayerDataTuple] = []
    for group, members in groups.items():
        if not members:
            continue
        layer_name = name if group == "annotations" else f"{name} {group}"
        if group == "points":
            layers.append(_points_layer(members, layer_name, frame, extent))
        else:
            layers.append(
                _shapes_layer(members, layer_name, frame, extent, text=group == "annotations")
            )
    if not layers:
        layers.append(_shapes_layer([], name, frame, extent, text=True))
    return layers


def _shapes_layer(annotations, layer_name, frame, extent, text) -> LayerDataTuple:
    data, shape_types, rows, face, edge = [], [], [], [], []
    measurement_names = _measurement_names(annotations)
    for annotation in annotations:
        columns = _columns(annotation, measurement_names)
        rgb = np.asarray(annotation.display_color, dtype=float) / 255
        drawn = [row for row in _geometry_rows(annotation.geometry) if row[0] != "point"]
        for part, (kind, role, yx) in enumerate(drawn):
            data.append(yx)
            shape_types.append(kind)
            row = columns | {"role": role, "part": part}
            if role == "hole":  # label the shape once, not each of its holes
                row |= {"class_name": "", "name": ""}
            rows.append(row)
            filled = kind == "polygon" and annotation.class_name is not None
            face.append([*rgb, _FACE_ALPHA if filled else 0.0])
            edge.append([*rgb, 1.0])
    meta = {
        "name": layer_name,
        "shape_type": shape_types or "polygon",
        "features": _features_table(rows, measurement_names),
        "feature_defaults": _feature_defaults(measurement_names),
        "face_color": np.asarray(face) if face else "transparent",
        "edge_color": np.asarray(edge) if edge else "#ff0000",
        # widths are in level-0 px: visible on a whole small image, not bloated on a whole slide
        "edge_width": annotation_edge_width(extent) if text else _clip(extent / 1500, 0.5, 4.0),
        "opacity": 1.0,
        "metadata": {"napari_ssmamba": {"kind": "annotations"}},
        **frame,
    }
    if text:
        meta["text"] = {
            "string": "{class_name}",
            "color": "white",
            "size": 10,
            "anchor": "upper_left",
        }
    return (data, meta, "shapes")


def _points_layer(annotations, layer_name, frame, extent) -> LayerDataTuple:
    coords, rows, face = [], [], []
    measurement_names = _measurement_names(annotations)
    for annotation in annotations:
        columns = _columns(annotation, measurement_names)
        rgb = np.asarray(annotation.display_color, dtype=float) / 255
        for part, (_, _, yx) in enumerate(_geometry_rows(annotation.geometry)):
            coords.append(yx[0])
            rows.append(columns | {"role": "", "part": part})
            face.append([*rgb, 1.0])
    meta = {
        "name": layer_name,
        "features": _features_table(rows, measurement_names),
        "feature_defaults": _feature_defaults(measurement_names),
        "face_color": np.asarray(face),
        "border_color": "white",
        "size": _clip(extent / 80, 5.0, 64.0),
        "text": {"string": "{name}", "color": "white", "size": 10, "anchor": "upper_left"},
        "metadata": {"napari_ssmamba": {"kind": "annotations"}},
        **frame,
    }
    return (np.asarray(coords, dtype=float).reshape(-1, 2), meta, "points")


def _geometry_rows(geometry) -> list[tuple[str, str, np.ndarray]]:
    """``(napari shape type or "point", role, (n, 2) yx vertices)`` for each drawable part."""
    kind = geometry.geom_type
    if kind == "Polygon":
        rows = [("polygon", "", _yx(geometry.exterior.coords)[:-1])]
        rows += [("path", "hole", _yx(ring.coords)) for ring in geometry.interiors]
        return rows
    if kind == "LineString":
        return [("path", "", _yx(geometry.coords))]
    if kind == "Point":
        return [("point", "", _yx(geometry.coords))]
    return [row for part in geometry.geoms for row in _geometry_rows(part)]


def _yx(coords) -> np.ndarray:
    return np.asarray(coords, dtype=float)[:, 1::-1]


def _is_points_only(geometry) -> bool:
    return all(kind == "point" for kind, _, _ in _geometry_rows(geometry))


def _columns(annotation: Annotation, measurement_names: list[str]) -> dict[str, Any]:
    import shapely

    extra = {}
    if annotation.extra_properties:
        extra["properties"] = annotation.extra_properties
    if annotation.extra_members:
        extra["members"] = annotation.extra_members
    nucleus = annotation.nucleus_geometry
    columns = {
        "id": annotation.id,
        "object_type": annotation.object_type,
        "class_name": annotation.class_name or "",
        "color": to_hex(annotation.color) if annotation.color is not None else "",
        "name": annotation.name or "",
        "locked": bool(annotation.locked),
        "is_ellipse": bool(annotation.is_ellipse),
        "geometry": shapely.to_wkt(annotation.geometry, rounding_precision=-1),
        "nucleus_geometry": shapely.to_wkt(nucleus, rounding_precision=-1)
        if nucleus is not None
        else "",
        "plane": json.dumps(annotation.plane) if annotation.plane is not None else "",
        "properties": json.dumps(extra) if extra else "",
    }
    for key in measurement_names:
        columns[key] = float(annotation.measurements.get(key, math.nan))
    return columns


def _measurement_names(annotations) -> list[str]:
    names = dict.fromkeys(key for a in annotations for key in a.measurements)
    clashes = [key for key in names if key in FEATURE_COLUMNS]
    if clashes:
        raise AnnotationError(
            f"measurement names {clashes} clash with the layer's own feature columns; rename them."
        )
    return list(names)


def _features_table(rows: list[dict], measurement_names: list[str]):
    import pandas as pd

    columns = list(FEATURE_COLUMNS) + measurement_names
    table = pd.DataFrame(rows, columns=columns)
    for key in FEATURE_COLUMNS:
        if key == "part":
            table[key] = table[key].fillna(0).astype(int)
        elif key in ("locked", "is_ellipse"):
            table[key] = table[key].fillna(False).astype(bool)
        else:
            table[key] = table[key].fillna("").astype(str)
    for key in measurement_names:
        table[key] = table[key].astype(float)
    return table


def _feature_defaults(measurement_names: list[str]) -> dict[str, Any]:
    return _DEFAULTS | {key: math.nan for key in measurement_names}


def annotation_edge_width(extent: float) -> float:
    """Edge width (level-0 px) of annotations over ``extent`` level-0 px: visible on a whole small
    image, not bloated on a whole slide."""
    return _clip(extent / 400, 1.0, 16.0)


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _extent(annotations) -> float:
    import shapely

    if not annotations:
        return 1000.0
    xmin, ymin, xmax, ymax = shapely.total_bounds([a.geometry for a in annotations])
    return float(max(xmax - xmin, ymax - ymin, 1.0))


# --------------------------------------------------------------------------------------------
# Layers -> annotations


def layer_to_annotations(layer_or_layer_data: Any) -> list[Annotation]:
    """Annotations from a napari shapes or points layer, or its ``(data, meta, type)`` tuple.

    Consecutive rows sharing an ``id`` form one annotation. Rows that are unchanged since
    :func:`annotations_to_layer_data` give back the stored geometry exactly (holes, parts and
    all); edited or newly drawn shapes are rebuilt from their vertices (rectangles and ellipses
    as polygons, paths and lines as LineStrings, ``role == "hole"`` paths cut into the polygon
    that contains them). Invalid drawn polygons are repaired and reported with an
    :class:`~napari_ssmamba.annotations.AnnotationRepairWarning`. A shape without an ``id``
    (drawn in napari), or a copy of an earlier shape, gets a new id.
    """
    data, meta, layer_type = _as_layer_data(layer_or_layer_data)
    layer_name = meta.get("name") or layer_type
    features = meta.get("features")
    if layer_type == "points":
        points = np.asarray(data, dtype=float)
        points = points.reshape(-1, points.shape[-1]) if points.size else np.empty((0, 2))
        shapes = [("point", p[None, -2:]) for p in points]
    elif layer_type == "shapes":
        shape_types = meta.get("shape_type", "polygon")
        if isinstance(shape_types, str):
            shape_types = [shape_types] * len(data)
        shapes = [
            (kind, np.asarray(yx, dtype=float)[:, -2:]) for kind, yx in zip(shape_types, data)
        ]
    else:
        raise AnnotationError(
            f"layer {layer_name!r} is a {layer_type} layer; only shapes and points hold ROIs."
        )
    rows = _feature_rows(features, len(shapes))

    annotations, seen = [], set()
    for start, stop in _groups(rows):
        first = rows[start]
        annotation_id = first["id"]
        if not annotation_id or annotation_id in seen:
            annotation_id = new_id()
        seen.add(annotation_id)
        group = [(shapes[i][0], rows[i]["role"], shapes[i][1]) for i in range(start, stop)]
        where = f"layer {layer_name!r}, shape {start}"
        geometry = _stored_geometry(first.get("geometry"), group)
        if geometry is None:
            geometry = _rebuild_geometry(group, where)
        if geometry is None:
            warnings.warn(
                f"{where}: only hole outlines are left of annotation {annotation_id} (its "
                "shape was deleted); they were left out",
                AnnotationRepairWarning,
                stacklevel=2,
            )
            continue
        annotations.append(_annotation_from_row(first, geometry, annotation_id, group, where))
    return annotations


def _to_slide_frame(layer: Any, slide_layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) taking ``layer``'s data coordinates to ``slide_layer``'s, per (y, x)."""
    slide_scale = np.asarray(slide_layer.scale[-2:], float)
    scale = np.asarray(layer.scale[-2:], float) / slide_scale
    offset = (
        np.asarray(layer.translate[-2:], float) - np.asarray(slide_layer.translate[-2:], float)
    ) / slide_scale
    return scale, offset


def in_slide_frame(layer: Any, slide_layer: Any) -> bool:
    """Whether ``layer``'s data coordinates are ``slide_layer``'s level-0 pixels."""
    scale, offset = _to_slide_frame(layer, slide_layer)
    return bool(np.allclose(scale, 1.0) and np.allclose(offset, 0.0))


def annotations_in_slide_frame(layer: Any, slide_layer: Any) -> list[Annotation]:
    """Annotations of a shapes or points ``layer`` in the level-0 pixels of ``slide_layer``.

    A layer's data coordinates are level-0 pixels only when it has the slide layer's scale and
    translate; a layer drawn in pixel units, or opened with another frame, is mapped through world
    coordinates (scale and translate of both layers) so that its ROIs land where they are drawn.
    """
    from shapely import affinity

    annotations = layer_to_annotations(layer)
    if in_slide_frame(layer, slide_layer):
        return annotations
    scale, offset = _to_slide_frame(layer, slide_layer)
    # shapely geometries are (x, y): [a, b, d, e, xoff, yoff] maps x' = a x + xoff, y' = e y + yoff
    matrix = [scale[1], 0.0, 0.0, scale[0], offset[1], offset[0]]
    for annotation in annotations:
        annotation.geometry = affinity.affine_transform(annotation.geometry, matrix)
        if annotation.nucleus_geometry is not None:
            annotation.nucleus_geometry = affinity.affine_transform(annotation.nucleus_geometry, matrix)
    return annotations


def _as_layer_data(value: Any) -> LayerDataTuple:
    if hasattr(value, "as_layer_data_tuple"):
        return value.as_layer_data_tuple()
    if isinstance(value, tuple) and len(value) == 3:
        return value
    raise AnnotationError(
        "expected a napari shapes/points layer or a (data, meta, layer_type) tuple, "
        f"got {type(value).__name__}."
    )


def _feature_rows(features: Any, count: int) -> list[dict[str, Any]]:
    if features is None or len(features) == 0:
        return [dict(_DEFAULTS) for _ in range(count)]
    if hasattr(features, "to_dict"):
        records = features.to_dict("records")
    else:
        records = [dict(zip(features, values)) for values in zip(*features.values())]
    if len(records) != count:
        raise AnnotationError(f"the layer has {count} shapes but {len(records)} feature rows.")
    return [
        {key: _clean(record.get(key, default)) for key, default in _DEFAULTS.items()}
        | {key: value for key, value in record.items() if key not in _DEFAULTS}
        for record in records
    ]


def _clean(value: Any) -> Any:
    """Empty strings for missing values (NaN, None) in the text columns."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _groups(rows: list[dict]) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of one annotation each: same id, increasing ``part``."""
    groups, start = [], 0
    for index in range(1, len(rows) + 1):
        same = (
            index < len(rows)
            and rows[index]["id"]
            and rows[index]["id"] == rows[start]["id"]
            and _part(rows[index]["part"]) > _part(rows[index - 1]["part"])
        )
        if not same:
            groups.append((start, index))
            start = index
    return groups


def _part(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _stored_geometry(wkt: Any, group: list) -> Any:
    """The stored geometry if the drawn rows are still exactly what it would draw."""
    import shapely

    if not isinstance(wkt, str) or not wkt:
        return None
    try:
        geometry = shapely.from_wkt(wkt)
    except shapely.errors.GEOSException:
        return None
    expected = [
        row for row in _geometry_rows(geometry) if (row[0] == "point") == (group[0][0] == "point")
    ]
    if len(expected) != len(group):
        return None
    for (kind, role, yx), (drawn_kind, drawn_role, drawn_yx) in zip(expected, group):
        same_kind = kind == drawn_kind or (kind == "point" and drawn_kind == "point")
        if not same_kind or role != drawn_role or yx.shape != drawn_yx.shape:
            return None
        tolerance = max(1e-3, 1e-6 * float(np.abs(yx).max(initial=0.0)))
        if not np.allclose(yx, drawn_yx, rtol=0.0, atol=tolerance):
            return None
    return geometry


def _rebuild_geometry(group: list, where: str) -> Any:
    import shapely

    polygons, lines, points, holes = [], [], [], []
    for kind, role, yx in group:
        xy = yx[:, ::-1]
        if kind == "point":
            points.append(shapely.Point(xy[0]))
        elif role == "hole":
            if len(xy) >= 3:
                holes.append(xy)
        elif kind == "ellipse":
            polygons.append(_ellipse_polygon(xy))
        elif kind in _POLYGON_TYPES:
            polygons.append(shapely.Polygon(xy) if len(xy) >= 3 else shapely.LineString(xy))
        elif len(xy) >= 2:
            lines.append(shapely.LineString(xy))
        else:
            points.append(shapely.Point(xy[0]))
    lines += [p for p in polygons if p.geom_type == "LineString"]
    polygons = [p for p in polygons if p.geom_type == "Polygon"]
    parts = polygons + lines + points
    if not parts:
        return None
    if holes:
        polygons = _cut_holes(polygons, holes, where)
        parts = polygons + lines + points
    if len(parts) == 1:
        geometry = parts[0]
    elif parts == polygons:
        geometry = shapely.MultiPolygon(parts)
    elif parts == lines:
        geometry = shapely.MultiLineString(parts)
    elif parts == points:
        geometry = shapely.MultiPoint(parts)
    else:
        geometry = shapely.GeometryCollection(parts)
    geometry, repair = repair_geometry(geometry)
    if repair:
        warnings.warn(f"{where}: {repair}", AnnotationRepairWarning, stacklevel=4)
    return geometry


def _cut_holes(polygons: list, holes: list, where: str) -> list:
    import shapely

    shells = [list(p.exterior.coords) for p in polygons]
    interiors: list[list] = [[] for _ in polygons]
    for hole in holes:
        ring = shapely.Polygon(hole)
        owner = next(
            (i for i, p in enumerate(polygons) if p.contains(ring.representative_point())), None
        )
        if owner is None:
            warnings.warn(
                f"{where}: a hole outline lies outside its shape and was left out",
                AnnotationRepairWarning,
                stacklevel=5,
            )
            continue
        interiors[owner].append(hole)
    return [shapely.Polygon(shell, rings) for shell, rings in zip(shells, interiors)]


def _ellipse_polygon(corners_xy: np.ndarray):
    """The polygon of a napari ellipse, given as the four corners of its bounding box."""
    import shapely

    center = corners_xy.mean(axis=0)
    half_u = (corners_xy[1] - corners_xy[0]) / 2
    half_v = (corners_xy[3] - corners_xy[0]) / 2
    angles = np.linspace(0, 2 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
    ring = center + np.cos(angles)[:, None] * half_u + np.sin(angles)[:, None] * half_v
    return shapely.Polygon(ring)


def _annotation_from_row(
    row: dict, geometry, annotation_id: str, group: list, where: str
) -> Annotation:
    import shapely

    color = None
    if row["color"]:
        try:
            color = from_hex(str(row["color"]))
        except ValueError:
            raise AnnotationError(f"{where}: color {row['color']!r} is not '#rrggbb'.") from None
    extra = _json_column(row["properties"], where, "properties") or {}
    nucleus = None
    if row["nucleus_geometry"]:
        try:
            nucleus = shapely.from_wkt(str(row["nucleus_geometry"]))
        except shapely.errors.GEOSException:
            raise AnnotationError(f"{where}: nucleus_geometry is not WKT.") from None
    measurements = {}
    for key, value in row.items():
        if key in _DEFAULTS or isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value):
            measurements[str(key)] = float(value)
    extra_properties = dict(extra.get("properties", {}))
    for key, value in row.items():
        if key not in _DEFAULTS and isinstance(value, str) and value:
            extra_properties.setdefault(str(key), value)
    return Annotation(
        geometry=geometry,
        object_type=str(row["object_type"]) or "annotation",
        class_name=str(row["class_name"]) or None,
        color=color,
        name=str(row["name"]) or None,
        measurements=measurements,
        id=annotation_id,
        locked=bool(row["locked"]),
        nucleus_geometry=nucleus,
        plane=_json_column(row["plane"], where, "plane"),
        is_ellipse=bool(row["is_ellipse"]) or any(kind == "ellipse" for kind, _, _ in group),
        extra_properties=extra_properties,
        extra_members=dict(extra.get("members", {})),
    )


def _json_column(value: Any, where: str, key: str) -> Any:
    if not value:
        return None
    try:
        return json.loads(str(value))
    except json.JSONDecodeError:
        raise AnnotationError(f"{where}: the {key} column is not JSON.") from None


# --------------------------------------------------------------------------------------------
# Alignment


def align_to_layer(layers: Sequence[Any], reference: Any) -> None:
    """Give ``layers`` the scale and translation of ``reference`` (e.g. the slide's image layer).

    Annotation layers hold level-0 pixels, as do slide layers, so matching the slide layer's
    last two scale and translate values puts them on the slide.
    """
    scale = tuple(reference.scale[-2:])
    translate = tuple(reference.translate[-2:])
    for layer in layers:
        layer.scale = scale
        layer.translate = translate
