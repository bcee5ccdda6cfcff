import json
import math
import warnings
from collections import Counter

import pytest
import shapely

from napari_ssmamba.annotations import AnnotationRepairWarning, read_geojson
from napari_ssmamba.errors import AnnotationError

SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]


def write_json(tmp_path, data, name="a.geojson", **dump_kwargs):
    path = tmp_path / name
    path.write_text(json.dumps(data, **dump_kwargs), encoding="utf-8")
    return path


def feature(geometry=None, **properties):
    return {
        "type": "Feature",
        "geometry": geometry or {"type": "Polygon", "coordinates": [SQUARE]},
        "properties": properties,
    }


def summary(annotations):
    return Counter(
        (a.object_type, a.class_name, a.color, a.geometry.geom_type) for a in annotations
    )


# Real QuPath exports -------------------------------------------------------------------------


def test_single_cells(demo_project_dir):
    annotations = read_geojson(demo_project_dir / "Single_cells.geojson")
    assert summary(annotations) == {
        ("cell", "single_cells_demo", (255, 0, 255), "Polygon"): 121,
        ("annotation", "circles", (0, 255, 0), "Polygon"): 4,
        ("annotation", "two_circles", (255, 0, 0), "Polygon"): 2,
        ("annotation", "class_1", (3, 128, 17), "Polygon"): 1,
        ("annotation", None, None, "Point"): 3,
    }
    cell = next(a for a in annotations if a.object_type == "cell")
    assert len(cell.measurements) == 126
    assert cell.measurements["Cell: Area"] == 113.0
    assert cell.id == "26b95b92-4e88-468c-bf38-6179e49e86b9"
    assert [a.locked for a in annotations].count(True) == 1


def test_td01(demo_project_dir):
    annotations = read_geojson(demo_project_dir / "TD_01_verysmall_mIF.geojson")
    assert summary(annotations) == {
        ("annotation", "class_1", (3, 128, 17), "Polygon"): 3,
        ("annotation", "class_2", (255, 0, 255), "Polygon"): 3,
        ("annotation", None, None, "Point"): 3,
    }
    assert all(0 <= c <= 1000 for a in annotations for c in a.geometry.bounds)


def test_03012023_jn(annotations_dir):
    annotations = read_geojson(annotations_dir / "03012023_JN.geojson")
    assert summary(annotations) == {
        ("annotation", "Tumor", (200, 0, 0), "Polygon"): 3,
        ("annotation", None, None, "Point"): 3,
    }
    points = [a for a in annotations if a.geometry.geom_type == "Point"]
    assert [p.name for p in points] == ["calib1", "calib2", "calib3"]
    assert all(p.locked for p in points)
    assert (points[0].geometry.x, points[0].geometry.y) == (11585.84, 14257.66)


def test_bare_multipolygon(annotations_dir):
    [annotation] = read_geojson(annotations_dir / "polygon.geojson")
    assert annotation.geometry.geom_type == "MultiPolygon"
    assert annotation.geometry.is_valid
    assert annotation.object_type == "annotation" and annotation.class_name is None


def test_valid_files_need_no_repair(annotations_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in annotations_dir.rglob("*.geojson"):
            report = []
            read_geojson(path, report=report)
            assert report == [], path


# Every form QuPath writes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "container",
    ["collection", "list", "feature", "geometry", "collection without type"],
)
@pytest.mark.parametrize("indent", [None, 2])
def test_containers(tmp_path, container, indent):
    f = feature(classification={"name": "Tumor", "color": [200, 0, 0]})
    data = {
        "collection": {"type": "FeatureCollection", "features": [f]},
        "list": [f],
        "feature": f,
        "geometry": f["geometry"],
        "collection without type": {"features": [f]},
    }[container]
    [annotation] = read_geojson(write_json(tmp_path, data, indent=indent))
    assert annotation.geometry.equals(shapely.box(0, 0, 10, 10))


def test_empty_collection(tmp_path):
    assert read_geojson(write_json(tmp_path, {"type": "FeatureCollection", "features": []})) == []


@pytest.mark.parametrize(
    ("classification", "name", "color"),
    [
        ("Tumor", "Tumor", None),
        ({"name": "Stroma", "color": [150, 200, 150]}, "Stroma", (150, 200, 150)),
        ({"names": ["Tumor", "Positive"], "color": [1, 2, 3]}, "Tumor: Positive", (1, 2, 3)),
        ({"name": "Tumor", "colorRGB": -3670016}, "Tumor", (200, 0, 0)),
        ({"name": "Other", "color": -256}, "Other", (255, 255, 0)),
        ({"name": "Other", "color": 0x00FF00}, "Other", (0, 255, 0)),
        (None, None, None),
    ],
)
def test_classification_forms(tmp_path, classification, name, color):
    [annotation] = read_geojson(write_json(tmp_path, [feature(classification=classification)]))
    assert (annotation.class_name, annotation.color) == (name, color)


def test_object_colour_without_class(tmp_path):
    [annotation] = read_geojson(write_json(tmp_path, [feature(color=[10, 20, 30])]))
    assert annotation.class_name is None and annotation.color == (10, 20, 30)


def test_measurement_forms(tmp_path):
    legacy = feature(measurements=[{"name": "Area", "value": 2.5}, {"name": "Gone", "value": None}])
    modern = feature(measurements={"Area": 2, "Text NaN": "NaN"})
    a, b = read_geojson(write_json(tmp_path, [legacy, modern]))
    assert a.measurements["Area"] == 2.5 and math.isnan(a.measurements["Gone"])
    assert b.measurements["Area"] == 2.0 and math.isnan(b.measurements["Text NaN"])


def test_object_types_flags_and_nucleus(tmp_path):
    nucleus = {"type": "Polygon", "coordinates": [[[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]}
    cell = feature(objectType="cell", isLocked=True, plane={"c": -1, "z": 0, "t": 0})
    cell["nucleusGeometry"] = nucleus
    features = [
        cell,
        feature(objectType="tmaCore", isEllipse=True, isMissing=False),
        feature(objectType="tile"),
        feature(objectType="detection"),
        {**feature(), "id": "PathCellObject"},
        {**feature(), "id": "PathDetectionObject"},
    ]
    annotations = read_geojson(write_json(tmp_path, features))
    assert [a.object_type for a in annotations] == [
        "cell",
        "tmaCore",
        "tile",
        "detection",
        "cell",
        "detection",
    ]
    assert annotations[0].nucleus_geometry.equals(shapely.box(2, 2, 4, 4))
    assert annotations[0].locked and annotations[0].plane == {"c": -1, "z": 0, "t": 0}
    assert annotations[1].is_ellipse and annotations[1].extra_properties == {"isMissing": False}


def test_geometry_types(tmp_path):
    geometries = [
        {"type": "Polygon", "coordinates": [SQUARE, [[2, 2], [4, 2], [4, 4], [2, 2]]]},
        {"type": "MultiPolygon", "coordinates": [[SQUARE], [[[20, 0], [30, 0], [30, 5], [20, 0]]]]},
        {"type": "Point", "coordinates": [1.5, 2.5]},
        {"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]},
        {"type": "LineString", "coordinates": [[0, 0], [5, 5], [9, 1]]},
        {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
        {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 0]}]},
    ]
    annotations = read_geojson(write_json(tmp_path, [feature(g) for g in geometries]))
    assert [a.geometry.geom_type for a in annotations] == [g["type"] for g in geometries]
    assert len(annotations[0].geometry.interiors) == 1


def test_ids(tmp_path):
    features = [
        {**feature(), "id": "3e4b6f50-8ea3-4bc5-bdb2-3d661eaea557"},
        {**feature(), "id": 7},
        feature(),
    ]
    kept, numbered, fresh = read_geojson(write_json(tmp_path, features))
    assert kept.id == "3e4b6f50-8ea3-4bc5-bdb2-3d661eaea557"
    assert numbered.extra_properties == {"originalId": 7}
    assert numbered.id == read_geojson(tmp_path / "a.geojson")[1].id  # stable
    assert len({kept.id, numbered.id, fresh.id}) == 3


def test_utf8_bom_and_non_ascii_names(tmp_path):
    path = tmp_path / "bom.geojson"
    text = json.dumps([feature(name="Läsion µ", classification="Tumör")], ensure_ascii=False)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    [annotation] = read_geojson(path)
    assert (annotation.name, annotation.class_name) == ("Läsion µ", "Tumör")


# Repairs are reported, never silent ----------------------------------------------------------


def test_self_intersection_is_repaired_and_reported(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    path = write_json(tmp_path, [feature(bowtie)])
    with pytest.warns(AnnotationRepairWarning, match="feature 0.*Self-intersection"):
        [annotation] = read_geojson(path)
    assert annotation.geometry.is_valid and annotation.geometry.area == pytest.approx(50)

    report = []
    read_geojson(path, report=report)
    assert len(report) == 1 and "feature 0" in report[0]
    with pytest.raises(AnnotationError, match="feature 0.*invalid"):
        read_geojson(path, invalid="raise")


def test_unclosed_ring_is_closed_and_reported(tmp_path):
    report = []
    [annotation] = read_geojson(
        write_json(tmp_path, [feature({"type": "Polygon", "coordinates": [SQUARE[:-1]]})]),
        report=report,
    )
    assert annotation.geometry.equals(shapely.box(0, 0, 10, 10))
    assert "unclosed" in report[0]


def test_zero_area_polygon_is_kept_as_a_line(tmp_path):
    flat = {"type": "Polygon", "coordinates": [[[0, 0], [5, 5], [10, 10], [0, 0]]]}
    report = []
    [annotation] = read_geojson(write_json(tmp_path, [feature(flat)]), report=report)
    assert annotation.geometry.geom_type in ("LineString", "MultiLineString")
    assert annotation.geometry.length > 0 and "no area" in report[0]


# Refusals name the file and the feature ------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not valid JSON"),
        (b'{"type": "FeatureCollection", "features": [', "not valid JSON"),
        (b"\xff\xfe\x00garbage\x80", "not UTF-8|not valid JSON"),
        (b'{"a": 1}', "not GeoJSON"),
        (b"42", "not GeoJSON"),
        (b"[" * 100000 + b"]" * 100000, "too deeply|not GeoJSON"),
        (b'[{"type": "Feature", "geometry": null, "properties": {}}]', "feature 0 has no geometry"),
        (
            b'[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": "x"}}]',
            "feature 0",
        ),
        (
            b'[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1e999, 0]}}]',
            "not a finite number",
        ),
        (
            b'[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1'
            + b"0" * 400
            + b", 0]}}]",
            "not a finite number",
        ),
        (
            b'[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1e12, 0]}}]',
            "2\\^31",
        ),
        (
            b'[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [true, 0]}}]',
            "numbers",
        ),
        (b'[{"type": "Feature", "geometry": {"type": "Circle", "coordinates": [0, 0]}}]', "Circle"),
        (
            b'[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}, '
            b'"properties": {"classification": {"name": "A", "color": [300, 0, 0]}}}]',
            "colour",
        ),
        (
            b'[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}, '
            b'"properties": {"measurements": {"a": "high"}}}]',
            "not a number",
        ),
    ],
)
def test_refusals(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    path.write_bytes(content)
    with pytest.raises(AnnotationError, match=message) as info:
        read_geojson(path)
    assert str(path) in str(info.value)


def test_qpdata_is_explained(tmp_path):
    path = tmp_path / "data.qpdata"
    path.write_bytes(b"\xac\xed\x00\x05sr\x00")
    with pytest.raises(AnnotationError, match="Export objects as GeoJSON"):
        read_geojson(path)
    renamed = tmp_path / "looks.geojson"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(AnnotationError, match="Java object serialization"):
        read_geojson(renamed)
