"""Property tests: whatever the file holds, reading raises only AnnotationError, and a write
either succeeds or leaves nothing behind."""

import json
import warnings

import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_ssmamba.annotations import (
    Annotation,
    AnnotationRepairWarning,
    read_geojson,
    write_geojson,
)
from napari_ssmamba.errors import AnnotationError

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

numbers = st.one_of(
    st.integers(-1000, 1000),
    st.floats(-1e4, 1e4, allow_nan=False),
    st.sampled_from([1e300, -1e308, 2.0**40, 0.0, 2**64, -(10**400)]),
)
positions = st.lists(numbers, min_size=2, max_size=3)
rings = st.lists(positions, min_size=0, max_size=8)
junk = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=5)),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
geometries = st.one_of(
    st.builds(lambda p: {"type": "Point", "coordinates": p}, positions),
    st.builds(lambda r: {"type": "LineString", "coordinates": r}, rings),
    st.builds(lambda rs: {"type": "Polygon", "coordinates": rs}, st.lists(rings, max_size=3)),
    st.builds(
        lambda ps: {"type": "MultiPolygon", "coordinates": ps},
        st.lists(st.lists(rings, max_size=2), max_size=3),
    ),
    st.builds(
        lambda ps: {"type": "MultiPoint", "coordinates": ps}, st.lists(positions, max_size=4)
    ),
    junk,
)
classifications = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.fixed_dictionaries(
        {"name": st.text(max_size=6)},
        optional={"color": junk | st.lists(st.integers(-5, 300), min_size=3, max_size=3)},
    ),
    st.fixed_dictionaries(
        {
            "names": st.lists(st.text(max_size=4), max_size=3),
            "colorRGB": st.integers(-(2**33), 2**33),
        }
    ),
    junk,
)
properties = st.fixed_dictionaries(
    {},
    optional={
        "objectType": st.sampled_from(["annotation", "detection", "cell", "tile", "tmaCore"])
        | junk,
        "classification": classifications,
        "name": st.text(max_size=6) | junk,
        "measurements": st.dictionaries(st.text(max_size=5), numbers | st.none() | junk, max_size=4)
        | st.lists(
            st.fixed_dictionaries({"name": st.text(max_size=4), "value": numbers}), max_size=3
        )
        | junk,
        "isLocked": st.booleans() | junk,
        "isEllipse": st.booleans() | junk,
        "plane": st.fixed_dictionaries(
            {"c": st.integers(-1, 3), "z": st.integers(0, 3), "t": st.integers(0, 3)}
        )
        | junk,
        "nucleusGeometry": geometries,
        "extra": junk,
    },
)
features = st.builds(
    lambda geometry, props, fid: {
        "type": "Feature",
        "id": fid,
        "geometry": geometry,
        "properties": props,
    },
    geometries,
    properties | junk,
    st.none() | st.uuids().map(str) | st.integers() | junk,
)
documents = st.one_of(
    st.builds(
        lambda fs: {"type": "FeatureCollection", "features": fs}, st.lists(features, max_size=4)
    ),
    st.lists(features, max_size=4),
    features,
    geometries,
    junk,
)


def read_or_refuse(path):
    """read_geojson's result, or None if it refused with AnnotationError; nothing else escapes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", AnnotationRepairWarning)
        try:
            return read_geojson(path)
        except AnnotationError:
            return None


def check_read_then_write(tmp_path, annotations):
    if annotations is None:
        return
    assert all(isinstance(a, Annotation) and a.geometry.is_valid for a in annotations)
    out = tmp_path / "out.geojson"
    out.unlink(missing_ok=True)
    write_geojson(annotations, out)
    again = read_geojson(out, report=[])
    assert len(again) == len(annotations)
    for a, b in zip(annotations, again):
        assert a.geometry.equals_exact(b.geometry, 0.01) or a.geometry.geom_type == "MultiPolygon"
        assert (a.id, a.class_name, a.object_type) == (b.id, b.class_name, b.object_type)


@FUZZ
@given(document=documents, indent=st.sampled_from([None, 1]))
def test_generated_geojson(tmp_path, document, indent):
    path = tmp_path / "in.geojson"
    path.write_text(json.dumps(document, indent=indent), encoding="utf-8")
    check_read_then_write(tmp_path, read_or_refuse(path))


VALID = json.dumps(
    {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "3e4b6f50-8ea3-4bc5-bdb2-3d661eaea557",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 9], [0, 0]]],
                },
                "properties": {
                    "objectType": "cell",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "measurements": {"Area": 81.0},
                },
            }
        ],
    },
    indent=1,
).encode()


@FUZZ
@given(
    position=st.integers(0, len(VALID)),
    cut=st.integers(0, 40),
    insert=st.binary(max_size=12)
    | st.sampled_from([b"\xff\xfe", b"\x80\x81", b"null", b"[" * 5000, b"1e400", b'"', b"{}"]),
)
def test_mutated_bytes(tmp_path, position, cut, insert):
    path = tmp_path / "in.geojson"
    path.write_bytes(VALID[:position] + insert + VALID[position + cut :])
    check_read_then_write(tmp_path, read_or_refuse(path))


@FUZZ
@given(depth=st.integers(1, 200_000), wrap=st.sampled_from(["list", "collection", "geometry"]))
def test_deep_nesting(tmp_path, depth, wrap):
    inner = b"[" * depth + b"]" * depth
    content = {
        "list": inner,
        "collection": b'{"type": "FeatureCollection", "features": ' + inner + b"}",
        "geometry": b'{"type": "Polygon", "coordinates": ' + inner + b"}",
    }[wrap]
    path = tmp_path / "in.geojson"
    path.write_bytes(content)
    check_read_then_write(tmp_path, read_or_refuse(path))


annotation_fields = st.fixed_dictionaries(
    {
        "geometry": st.sampled_from(
            [shapely.box(0, 0, 5, 5), shapely.Point(1, 2), shapely.Polygon(), None, "x"]
        )
    },
    optional={
        "class_name": st.none() | st.text(max_size=5),
        "color": st.none()
        | st.tuples(st.integers(-10, 300), st.integers(0, 255), st.integers(0, 255))
        | junk,
        "measurements": st.dictionaries(st.text(max_size=4), numbers | junk, max_size=3),
        "extra_properties": st.dictionaries(st.text(max_size=4), junk, max_size=3),
        "plane": st.none() | junk,
        "id": st.uuids().map(str) | st.text(max_size=5),
    },
)


@FUZZ
@given(fields=st.lists(annotation_fields, min_size=1, max_size=3))
def test_write_is_all_or_nothing(tmp_path, fields):
    path = tmp_path / "sub" / "out.geojson"
    if path.exists():
        path.unlink()
    try:
        write_geojson([Annotation(**f) for f in fields], path)
    except AnnotationError:
        assert not path.parent.exists() or list(path.parent.iterdir()) == []
    else:
        assert [p.name for p in path.parent.iterdir()] == ["out.geojson"]
        assert len(read_geojson(path, report=[])) == len(fields)
