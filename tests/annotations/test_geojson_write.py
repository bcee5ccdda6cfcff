import json
import math
import uuid

import pytest
import shapely

from napari_ssmamba.annotations import Annotation, read_geojson, write_geojson
from napari_ssmamba.errors import AnnotationError

REAL_FILES = [
    "03012023_JN.geojson",
    "polygon.geojson",
    "qupath-demo-project/Single_cells.geojson",
    "qupath-demo-project/TD_01_verysmall_mIF.geojson",
]


def same_measurements(a, b):
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def assert_same_annotations(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.geometry.geom_type == b.geometry.geom_type
        assert a.geometry.equals_exact(b.geometry, 0.01)
        if a.nucleus_geometry is not None:
            assert a.nucleus_geometry.equals_exact(b.nucleus_geometry, 0.01)
        assert (a.id, a.object_type, a.class_name, a.name, a.locked, a.is_ellipse, a.plane) == (
            b.id,
            b.object_type,
            b.class_name,
            b.name,
            b.locked,
            b.is_ellipse,
            b.plane,
        )
        assert a.color == b.color or (a.color is None and b.color == a.display_color)
        assert same_measurements(a.measurements, b.measurements)
        assert a.extra_properties == b.extra_properties


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_round_trip(annotations_dir, tmp_path, name):
    before = read_geojson(annotations_dir / name)
    after = read_geojson(write_geojson(before, tmp_path / "out.geojson"))
    assert_same_annotations(before, after)


def test_written_features_are_what_qupath_imports(tmp_path):
    annotations = [
        Annotation(
            shapely.Polygon(
                [(0, 0), (100, 0), (100, 100), (0, 100)], [[(10, 10), (20, 10), (20, 20)]]
            ),
            class_name="Tumor",
            measurements={"Area µm^2": 12.5, "Missing": math.nan},
        ),
        Annotation(shapely.MultiPolygon([shapely.box(0, 0, 5, 5)]), class_name="My class"),
        Annotation(shapely.Point(3, 4), name="calib", locked=True, id="not-a-uuid"),
        Annotation(
            shapely.box(0, 0, 9, 9),
            object_type="cell",
            class_name="Tumor: Positive",
            color=(1, 2, 3),
            nucleus_geometry=shapely.box(2, 2, 4, 4),
        ),
    ]
    path = write_geojson(annotations, tmp_path / "out.geojson")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection"
    holes, single, point, cell = data["features"]
    for feature in data["features"]:
        uuid.UUID(feature["id"])
        assert feature["properties"]["objectType"] in ("annotation", "cell")
    rings = holes["geometry"]["coordinates"]
    assert len(rings) == 2 and all(ring[0] == ring[-1] for ring in rings)
    assert holes["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert holes["properties"]["measurements"] == {"Area µm^2": 12.5, "Missing": None}
    assert single["geometry"]["type"] == "Polygon"
    assert len(single["properties"]["classification"]["color"]) == 3
    assert "classification" not in point["properties"] and point["properties"]["isLocked"] is True
    assert cell["properties"]["classification"] == {
        "name": "Tumor: Positive",
        "names": ["Tumor", "Positive"],
        "color": [1, 2, 3],
    }
    assert cell["nucleusGeometry"]["type"] == "Polygon"


@pytest.mark.parametrize(
    "bad",
    [
        Annotation(shapely.Polygon()),
        Annotation(shapely.box(0, 0, 1, 1), class_name="A", color=(300, 0, 0)),
        Annotation(shapely.box(0, 0, 1, 1), measurements={"a": "high"}),
        Annotation(shapely.Point(math.inf, 0)),
        Annotation("POLYGON ((0 0, 1 0, 1 1, 0 0))"),
        "not an annotation",
    ],
)
def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, bad):
    path = tmp_path / "out.geojson"
    path.write_text("previous", encoding="utf-8")
    with pytest.raises(AnnotationError):
        write_geojson([Annotation(shapely.box(0, 0, 1, 1)), bad], path)
    assert path.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.geojson"]
