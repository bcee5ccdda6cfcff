"""QuPath GeoJSON in and out.

Reading accepts everything QuPath has written from 0.2 to 0.6 (and what other tools hand to it): a
FeatureCollection, a bare list of Features, one Feature, or a bare geometry; classification as a
string, ``{name, color}``, ``{names, color}`` or 0.2's ``{name, colorRGB}``; measurements as an
object or 0.2's list of ``{name, value}``; 0.2's object type in the feature ``id``.

Invalid geometry is repaired with shapely and each repair is reported: appended to ``report`` when
the caller passes a list, else issued as an :class:`AnnotationRepairWarning`. With
``invalid="raise"`` a repair is refused with an :class:`~napari_ssmamba.errors.AnnotationError`
instead. Anything that cannot be read (no geometry, wrong types, non-finite coordinates) is refused
with an ``AnnotationError`` naming the file and the feature; nothing is dropped silently.

Writing produces what QuPath imports: a FeatureCollection of Features with a UUID ``id``,
``objectType``, ``classification`` ``{name, color}`` (always with a colour), measurements as an
object, closed rings with holes as inner rings, and no one-member MultiPolygon. Coordinates are
level-0 pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from napari_ssmamba._atomic import atomic_open
from napari_ssmamba.annotations.annotation import Annotation, new_id
from napari_ssmamba.annotations.colors import RGB, default_class_color, unpack_rgb
from napari_ssmamba.annotations.repair import repair_geometry, single_part
from napari_ssmamba.errors import AnnotationError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "AnnotationRepairWarning",
    "QPDATA_MESSAGE",
    "annotation_to_feature",
    "annotations_to_geojson",
    "parse_geojson",
    "read_geojson",
    "write_geojson",
]

#: Coordinates beyond this many pixels from the origin are refused (no slide is that large).
MAX_COORDINATE = 2.0**31

#: How deep GeometryCollections may nest.
MAX_NESTING = 16

QPDATA_MESSAGE = (
    "{path} is a QuPath .qpdata file, which is Java object serialization that only QuPath "
    "itself can read. In QuPath, open the image and choose File > Export objects as GeoJSON "
    "(tick 'Pretty GeoJSON' if you like, keep 'Export as FeatureCollection'), then open the "
    ".geojson file here."
)

_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)

# QuPath 0.2 put the Java class of the object in the feature id.
_LEGACY_OBJECT_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
    "PathRootObject": "root",
}

_KNOWN_PROPERTIES = (
    "objectType",
    "classification",
    "name",
    "measurements",
    "isLocked",
    "isEllipse",
    "plane",
    "nucleusGeometry",
)
_FEATURE_MEMBERS = ("type", "id", "geometry", "properties", "nucleusGeometry")


class AnnotationRepairWarning(UserWarning):
    """An annotation's geometry was invalid and has been repaired; the message says how."""


# --------------------------------------------------------------------------------------------
# Reading


def read_geojson(
    path: str | os.PathLike,
    *,
    report: list[str] | None = None,
    invalid: Literal["repair", "raise"] = "repair",
) -> list[Annotation]:
    """Read a QuPath GeoJSON file into Annotations, in file order.

    ``report``: a list that receives one message per repaired geometry (then no warnings are
    issued). A feature without an id gets a UUID derived from the file's content and the
    feature's position, so reading the same file twice gives the same ids. ``invalid="raise"``
    refuses invalid geometry instead of repairing it. Raises
    ``AnnotationError`` for anything unreadable (naming the file and the feature), and for a
    QuPath ``.qpdata`` file with instructions to export GeoJSON instead; ``OSError`` when the
    file cannot be opened at all.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix.lower() == ".qpdata" or raw[:2] == b"\xac\xed":
        raise AnnotationError(QPDATA_MESSAGE.format(path=path))
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded); GeoJSON must be "
            "UTF-8. Export it again from QuPath, or re-save it as UTF-8."
        ) from None
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the file may be truncated. Export it again from QuPath."
        ) from None
    except RecursionError:
        raise AnnotationError(f"{path} nests JSON too deeply to be GeoJSON.") from None
    id_seed = hashlib.sha256(raw).hexdigest()
    return parse_geojson(data, source=str(path), report=report, invalid=invalid, id_seed=id_seed)


def parse_geojson(
    data: Any,
    *,
    source: str = "GeoJSON",
    report: list[str] | None = None,
    invalid: Literal["repair", "raise"] = "repair",
    id_seed: str | None = None,
) -> list[Annotation]:
    """Annotations from already-decoded GeoJSON (``json.load`` output); see :func:`read_geojson`.

    ``id_seed`` makes the ids given to features without one reproducible; without it they are
    random.
    """
    if invalid not in ("repair", "raise"):
        raise ValueError(f"invalid must be 'repair' or 'raise', not {invalid!r}")
    annotations = []
    for index, feature in enumerate(_features_of(data, source)):
        annotation = _parse_feature(feature, index, source, report, invalid)
        if annotation.id is None:
            annotation.id = (
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"{id_seed}/{index}")) if id_seed else new_id()
            )
        annotations.append(annotation)
    return annotations


def _features_of(data: Any, source: str) -> list[dict]:
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection" or (kind is None and "features" in data):
            items = data.get("features")
            if not isinstance(items, list):
                raise AnnotationError(
                    f"{source}: the FeatureCollection's 'features' is not a list."
                )
        elif kind == "Feature":
            items = [data]
        elif kind in _GEOMETRY_TYPES:
            items = [data]
        else:
            raise AnnotationError(
                f"{source} is JSON but not GeoJSON: its top-level 'type' is {_short(kind)}, "
                "expected 'FeatureCollection', 'Feature' or a geometry type. Export objects as "
                "GeoJSON from QuPath."
            )
    else:
        raise AnnotationError(
            f"{source} is JSON but not GeoJSON: it holds a {type(data).__name__}, expected a "
            "FeatureCollection, a list of Features, a Feature or a geometry."
        )
    features = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise AnnotationError(
                f"{source}: feature {index} is a {type(item).__name__}, not a GeoJSON object."
            )
        if item.get("type") in _GEOMETRY_TYPES:
            item = {"type": "Feature", "geometry": item, "properties": {}}
        features.append(item)
    return features


def _parse_feature(
    feature: dict, index: int, source: str, report: list[str] | None, invalid: str
) -> Annotation:
    raw_id = feature.get("id")
    where = f"{source}: feature {index}" + (f" (id {_short(raw_id)})" if raw_id is not None else "")
    if feature.get("type") not in ("Feature", None):
        raise AnnotationError(
            f"{where} has type {_short(feature.get('type'))}, expected 'Feature'."
        )
    properties = feature.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise AnnotationError(
            f"{where}: 'properties' is a {type(properties).__name__}, not an object."
        )

    notes: list[str] = []
    geometry = _checked_geometry(feature.get("geometry"), where, "geometry", notes, invalid)
    nucleus = feature.get("nucleusGeometry", properties.get("nucleusGeometry"))
    if nucleus is not None:
        nucleus = _checked_geometry(nucleus, where, "nucleusGeometry", notes, invalid)

    object_type = properties.get("objectType")
    annotation_id, extra = None, {}
    if isinstance(raw_id, str) and raw_id in _LEGACY_OBJECT_TYPES:
        object_type = object_type or _LEGACY_OBJECT_TYPES[raw_id]
    elif raw_id is not None:
        annotation_id, extra = _parse_id(raw_id, where)
    if object_type is None:
        object_type = "annotation"
    if not isinstance(object_type, str):
        raise AnnotationError(f"{where}: objectType {_short(object_type)} is not a string.")

    class_name, class_color = _parse_classification(properties.get("classification"), where)
    own_color = _parse_color(properties["color"], where, "color") if "color" in properties else None
    name = properties.get("name")
    if name is not None and not isinstance(name, str):
        raise AnnotationError(f"{where}: name {_short(name)} is not a string.")
    plane = properties.get("plane")
    if plane is not None and not isinstance(plane, dict):
        raise AnnotationError(f"{where}: plane {_short(plane)} is not an object.")

    extra_properties = {k: v for k, v in properties.items() if k not in _KNOWN_PROPERTIES}
    extra_properties.update(extra)
    annotation = Annotation(
        geometry=geometry,
        object_type=object_type,
        class_name=class_name,
        color=class_color if class_name else own_color,
        name=name,
        measurements=_parse_measurements(properties.get("measurements"), where),
        id=annotation_id,
        locked=_parse_flag(properties.get("isLocked"), where, "isLocked"),
        nucleus_geometry=nucleus,
        plane=plane,
        is_ellipse=_parse_flag(properties.get("isEllipse"), where, "isEllipse"),
        extra_properties=extra_properties,
        extra_members={k: v for k, v in feature.items() if k not in _FEATURE_MEMBERS},
    )
    for note in notes:
        _report(f"{where}: {note}", report)
    return annotation


def _report(message: str, report: list[str] | None) -> None:
    if report is not None:
        report.append(message)
    else:
        warnings.warn(message, AnnotationRepairWarning, stacklevel=4)


def _parse_id(raw_id: Any, where: str) -> tuple[str, dict]:
    """The feature id as a UUID string; any other id maps to a stable UUID and is kept aside."""
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise AnnotationError(f"{where}: id {_short(raw_id)} is neither a string nor an integer.")
    text = str(raw_id)
    try:
        return str(uuid.UUID(text)), {}
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, text)), {"originalId": raw_id}


def _parse_flag(value: Any, where: str, key: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise AnnotationError(f"{where}: {key} {_short(value)} is not true or false.")


def _parse_color(value: Any, where: str, key: str) -> RGB:
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**31) <= value < 2**32:
            raise AnnotationError(f"{where}: {key} {value} is not a packed RGB integer.")
        return unpack_rgb(value)
    if (
        isinstance(value, (list, tuple))
        and len(value) in (3, 4)
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return (value[0], value[1], value[2])
    raise AnnotationError(
        f"{where}: {key} {_short(value)} is not a colour; expected [r, g, b] with 0-255 values or "
        "QuPath's packed integer."
    )


def _parse_classification(value: Any, where: str) -> tuple[str | None, RGB | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        return value or None, None
    if not isinstance(value, dict):
        raise AnnotationError(
            f"{where}: classification {_short(value)} is neither a name nor an object."
        )
    names = value.get("names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AnnotationError(f"{where}: classification names {_short(names)} are not strings.")
        name = ": ".join(names)
    else:
        name = value.get("name")
        if name is not None and not isinstance(name, str):
            raise AnnotationError(f"{where}: classification name {_short(name)} is not a string.")
    color = None
    for key in ("color", "colorRGB"):
        if value.get(key) is not None:
            color = _parse_color(value[key], where, f"classification {key}")
            break
    return name or None, color


def _parse_measurements(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, list):  # QuPath 0.2: [{"name": ..., "value": ...}, ...]
        pairs = []
        for item in value:
            if not isinstance(item, dict) or "name" not in item:
                raise AnnotationError(
                    f"{where}: measurement {_short(item)} is not {{name, value}}."
                )
            pairs.append((item["name"], item.get("value")))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise AnnotationError(
            f"{where}: measurements {_short(value)} are neither an object nor a list."
        )
    measurements = {}
    for key, number in pairs:
        if not isinstance(key, str):
            raise AnnotationError(f"{where}: measurement name {_short(key)} is not a string.")
        measurements[key] = _measurement_value(number, where, key)
    return measurements


def _measurement_value(value: Any, where: str, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range
            return math.copysign(math.inf, value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise AnnotationError(
        f"{where}: measurement {_short(key)} has value {_short(value)}, which is not a number."
    )


# Geometry -----------------------------------------------------------------------------------


def _checked_geometry(value: Any, where: str, key: str, notes: list[str], invalid: str) -> Any:
    if value is None:
        raise AnnotationError(
            f"{where} has no {key} (it is null or missing); QuPath objects always have one. "
            "Remove the feature or give it a geometry."
        )
    changes: list[str] = []
    geometry = _parse_geometry(value, f"{where}: {key}", changes, depth=0)
    if geometry.is_empty:
        raise AnnotationError(f"{where}: {key} is empty (it has no coordinates).")
    geometry, repair = repair_geometry(geometry)
    if repair:
        changes.append(repair)
    if geometry.is_empty:
        raise AnnotationError(f"{where}: {key} has nothing left once made valid ({repair}).")
    if changes and invalid == "raise":
        raise AnnotationError(f"{where}: {key} is invalid: {'; '.join(changes)}.")
    notes.extend(f"{key} {change}" for change in changes)
    return geometry


def _parse_geometry(value: Any, where: str, changes: list[str], depth: int) -> Any:
    import shapely

    if not isinstance(value, dict):
        raise AnnotationError(f"{where} is a {type(value).__name__}, not a GeoJSON geometry.")
    kind = value.get("type")
    if kind == "GeometryCollection":
        members = value.get("geometries")
        if not isinstance(members, list):
            raise AnnotationError(f"{where}: a GeometryCollection needs a 'geometries' list.")
        if depth >= MAX_NESTING:
            raise AnnotationError(
                f"{where}: GeometryCollections nested more than {MAX_NESTING} deep."
            )
        return shapely.GeometryCollection(
            [_parse_geometry(m, f"{where}[{i}]", changes, depth + 1) for i, m in enumerate(members)]
        )
    if kind not in _GEOMETRY_TYPES:
        raise AnnotationError(f"{where} has type {_short(kind)}, not a GeoJSON geometry type.")
    coordinates = value.get("coordinates")
    if kind == "Point":
        return shapely.Point(_positions([coordinates], where)[0])
    if kind == "MultiPoint":
        points = _positions(coordinates, where)
        return shapely.MultiPoint(points) if len(points) else shapely.MultiPoint()
    if kind == "LineString":
        return _line(coordinates, where, changes)
    parts = _array(coordinates, where)
    if kind == "MultiLineString":
        return _multi([_line(p, where, changes) for p in parts])
    if kind == "Polygon":
        return _polygon(parts, where, changes)
    return _multi([_polygon(_array(p, where), where, changes) for p in parts])


def _array(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise AnnotationError(f"{where}: coordinates {_short(value)} are not an array.")
    return value


def _positions(value: Any, where: str) -> np.ndarray:
    """``(n, 2)`` float x, y of a list of positions; extra dimensions (z) are ignored."""
    import numpy as np

    parts = _array(value, where)
    xy = None
    try:
        if {type(c) for p in parts for c in p} <= {int, float}:
            xy = np.array(parts, dtype=float)
    except (TypeError, ValueError, OverflowError):
        pass
    if xy is None or xy.ndim != 2 or xy.shape[1] < 2:
        # Ragged, mistyped or overflowing: find the position at fault, one by one.
        xy = np.array([_position(p, where) for p in parts], dtype=float).reshape(-1, 2)
    xy = xy[:, :2]
    bad = ~np.isfinite(xy).all(axis=1) | (np.abs(xy) > MAX_COORDINATE).any(axis=1)
    if bad.any():
        _position(parts[int(np.argmax(bad))], where)
    return xy


def _position(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) < 2:
        raise AnnotationError(f"{where}: {_short(value)} is not an [x, y] position.")
    if not all(type(c) in (int, float) for c in value[:2]):
        raise AnnotationError(
            f"{where}: position {_short(value)} holds something other than numbers."
        )
    try:
        x, y = float(value[0]), float(value[1])
    except OverflowError:
        x = y = math.inf
    if not (math.isfinite(x) and math.isfinite(y)):
        raise AnnotationError(f"{where}: position {_short(value)} is not a finite number.")
    if abs(x) > MAX_COORDINATE or abs(y) > MAX_COORDINATE:
        raise AnnotationError(
            f"{where}: position {_short(value)} lies beyond ±2^31 px; coordinates must be "
            "level-0 pixels of the slide."
        )
    return x, y


def _line(value: Any, where: str, changes: list[str]) -> Any:
    import numpy as np
    import shapely

    points = _positions(value, where)
    distinct = np.unique(points, axis=0)
    if len(distinct) < 2:
        if not len(distinct):
            return shapely.LineString()
        changes.append("is a line with a single distinct point, kept as a Point")
        return shapely.Point(distinct[0])
    return shapely.LineString(points)


def _ring(value: Any, where: str, changes: list[str], role: str) -> np.ndarray:
    import numpy as np

    points = _positions(value, where)
    if len(points) and not np.array_equal(points[0], points[-1]):
        changes.append(f"has an unclosed {role} ring; closed it")
        points = np.vstack([points, points[:1]])
    return points


def _polygon(rings: list, where: str, changes: list[str]) -> Any:
    import shapely

    if not rings:
        return shapely.Polygon()
    shell = _ring(rings[0], where, changes, "outer")
    if len(shell) < 4:
        distinct = list(dict.fromkeys(map(tuple, shell.tolist())))
        changes.append(
            f"has an outer ring of {len(distinct)} distinct point(s), no polygon; kept as a "
            f"{'Point' if len(distinct) == 1 else 'LineString'}"
        )
        if not distinct:
            return shapely.Polygon()
        return shapely.Point(distinct[0]) if len(distinct) == 1 else shapely.LineString(distinct)
    holes = []
    for number, hole_value in enumerate(rings[1:], start=1):
        hole = _ring(hole_value, where, changes, "inner")
        if len(hole) < 4:
            changes.append(f"inner ring {number} has fewer than 3 points and no area; removed it")
            continue
        holes.append(hole)
    return shapely.Polygon(shell, holes)


def _multi(parts: list) -> Any:
    import shapely

    parts = [p for p in parts if not p.is_empty]
    kinds = {p.geom_type for p in parts}
    if kinds == {"Polygon"}:
        return shapely.MultiPolygon(parts)
    if kinds == {"LineString"}:
        return shapely.MultiLineString(parts)
    return shapely.GeometryCollection(parts)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Writing


def write_geojson(annotations: Iterable[Annotation], path: str | os.PathLike) -> Path:
    """Write Annotations as a QuPath-importable GeoJSON FeatureCollection, atomically.

    The whole document is built before the file is opened, so bad input raises
    ``AnnotationError`` and leaves any existing file untouched. Returns the path written.
    """
    path = Path(path)
    try:
        text = json.dumps(annotations_to_geojson(annotations), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, AnnotationError):
            raise
        raise AnnotationError(
            f"cannot write {path}: a property is not plain JSON ({exc})."
        ) from None
    with atomic_open(path, "w") as fh:
        fh.write(text)
        fh.write("\n")
    return path


def annotations_to_geojson(annotations: Iterable[Annotation]) -> dict:
    """The FeatureCollection :func:`write_geojson` writes, as a dict."""
    features = []
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, Annotation):
            raise AnnotationError(
                f"item {index} is a {type(annotation).__name__}, not an Annotation."
            )
        features.append(annotation_to_feature(annotation, where=f"annotation {index}"))
    return {"type": "FeatureCollection", "features": features}


def annotation_to_feature(annotation: Annotation, where: str = "annotation") -> dict:
    """One QuPath GeoJSON Feature for ``annotation``."""
    where = f"{where} ({annotation.id})"
    _check_fields(annotation, where)
    feature: dict[str, Any] = {
        k: _finite(v) for k, v in annotation.extra_members.items() if k not in _FEATURE_MEMBERS
    }
    feature.update(
        type="Feature",
        id=_uuid_for_writing(annotation.id),
        geometry=_geometry_to_geojson(annotation.geometry, where),
    )
    if annotation.nucleus_geometry is not None:
        feature["nucleusGeometry"] = _geometry_to_geojson(annotation.nucleus_geometry, where)

    properties: dict[str, Any] = {
        k: _finite(v) for k, v in annotation.extra_properties.items() if k not in _KNOWN_PROPERTIES
    }
    properties["objectType"] = annotation.object_type
    if annotation.class_name:
        color = annotation.color or default_class_color(annotation.class_name)
        classification: dict[str, Any] = {"name": annotation.class_name}
        if len(annotation.class_names) > 1:
            classification["names"] = list(annotation.class_names)
        classification["color"] = _color_for_writing(color, where)
        properties["classification"] = classification
    elif annotation.color is not None:
        properties["color"] = _color_for_writing(annotation.color, where)
    if annotation.name:
        properties["name"] = annotation.name
    if annotation.measurements:
        properties["measurements"] = {
            str(key): _number_for_writing(value, where, key)
            for key, value in annotation.measurements.items()
        }
    if annotation.locked:
        properties["isLocked"] = True
    if annotation.is_ellipse:
        properties["isEllipse"] = True
    if annotation.plane is not None:
        properties["plane"] = _finite(annotation.plane)
    feature["properties"] = properties
    return feature


def _check_fields(annotation: Annotation, where: str) -> None:
    """Refuse what the reader would refuse, so that everything written reads back."""
    for key in ("object_type", "class_name", "name"):
        value = getattr(annotation, key)
        if value is not None and not isinstance(value, str):
            raise AnnotationError(f"{where}: {key} {_short(value)} is not a string.")
    if annotation.plane is not None and not isinstance(annotation.plane, dict):
        raise AnnotationError(f"{where}: plane {_short(annotation.plane)} is not a dict.")
    if not isinstance(annotation.measurements, dict):
        raise AnnotationError(
            f"{where}: measurements {_short(annotation.measurements)} are not a dict."
        )


def _finite(value: Any, depth: int = 0) -> Any:
    """``value`` with NaN and infinities replaced by null, which is what JSON can hold."""
    if depth > 64:
        raise AnnotationError("a property nests more than 64 levels deep.")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, depth + 1) for v in value]
    return value


def _uuid_for_writing(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, str(value)))


def _color_for_writing(color: Any, where: str) -> list[int]:
    try:
        rgb = [int(c) for c in color]
    except (TypeError, ValueError, OverflowError):
        rgb = []
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise AnnotationError(
            f"{where}: colour {_short(color)} is not (r, g, b) with 0-255 values."
        )
    return rgb


def _number_for_writing(value: Any, where: str, key: str) -> float | None:
    try:
        number = float(value)
    except OverflowError:
        return None
    except (TypeError, ValueError):
        raise AnnotationError(
            f"{where}: measurement {_short(key)} = {_short(value)} is not a number."
        ) from None
    return number if math.isfinite(number) else None


def _geometry_to_geojson(geometry: Any, where: str) -> dict:
    import shapely

    if not isinstance(geometry, shapely.Geometry) or geometry.is_empty:
        raise AnnotationError(
            f"{where}: geometry {_short(geometry)} is not a non-empty shapely geometry."
        )
    if geometry.geom_type == "MultiPolygon":
        geometry = single_part(geometry)
    coordinates = shapely.get_coordinates(geometry)
    if not (abs(coordinates) <= MAX_COORDINATE).all():
        raise AnnotationError(f"{where}: geometry has non-finite or out-of-range coordinates.")
    return _mapping(geometry)


def _mapping(geometry: Any) -> dict:
    """GeoJSON geometry of a shapely geometry: 2-D, full precision, closed rings, holes kept."""
    kind = geometry.geom_type
    if kind == "GeometryCollection":
        return {"type": kind, "geometries": [_mapping(g) for g in geometry.geoms]}
    if kind == "Point":
        coordinates = _xy(geometry)[0]
    elif kind == "LineString":
        coordinates = _xy(geometry)
    elif kind == "Polygon":
        coordinates = _rings(geometry)
    elif kind == "MultiPoint":
        coordinates = [_xy(p)[0] for p in geometry.geoms]
    elif kind == "MultiLineString":
        coordinates = [_xy(line) for line in geometry.geoms]
    else:
        coordinates = [_rings(p) for p in geometry.geoms]
    return {"type": kind, "coordinates": coordinates}


def _rings(polygon: Any) -> list:
    import shapely

    holes = range(shapely.get_num_interior_rings(polygon))
    return [_xy(polygon.exterior)] + [_xy(shapely.get_interior_ring(polygon, i)) for i in holes]


def _xy(geometry: Any) -> list[list[float]]:
    import shapely

    return shapely.get_coordinates(geometry).tolist()
