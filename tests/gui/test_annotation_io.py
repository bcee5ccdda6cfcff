import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely.affinity

from napari_ssmamba.annotations import read_geojson
from napari_ssmamba.errors import AnnotationError
from napari_ssmamba.gui.annotation_io import get_geojson_reader, read_geojson_layers, write_geojson

REAL_FILES = [
    "03012023_JN.geojson",
    "polygon.geojson",
    "qupath-demo-project/Single_cells.geojson",
    "qupath-demo-project/TD_01_verysmall_mIF.geojson",
]


def assert_files_equal(original: Path, written: Path):
    before = {a.id: a for a in read_geojson(original)}
    after = {a.id: a for a in read_geojson(written)}
    assert before.keys() == after.keys()
    for key, a in before.items():
        b = after[key]
        assert b.geometry.geom_type == a.geometry.geom_type
        assert b.geometry.equals_exact(a.geometry, 0.01)
        assert (b.object_type, b.class_name, b.name, b.locked) == (
            a.object_type,
            a.class_name,
            a.name,
            a.locked,
        )
        assert b.color == (a.color or a.display_color if a.class_name else a.color)
        assert b.measurements.keys() == a.measurements.keys()
        assert all(b.measurements[k] == v or math.isnan(v) for k, v in a.measurements.items())


def test_reader_claims_geojson_only(annotations_dir, tmp_path):
    assert get_geojson_reader(str(annotations_dir / "polygon.geojson")) is read_geojson_layers
    as_json = shutil.copy(annotations_dir / "03012023_JN.geojson", tmp_path / "export.json")
    assert get_geojson_reader(str(as_json)) is read_geojson_layers
    classes = annotations_dir / "qupath-demo-project" / "classifiers" / "classes.json"
    assert get_geojson_reader(str(classes)) is None
    assert get_geojson_reader(str(tmp_path / "slide.svs")) is None


def test_reader_layers(annotations_dir):
    layers = read_geojson_layers(
        str(annotations_dir / "qupath-demo-project" / "Single_cells.geojson")
    )
    assert [(meta["name"], layer_type, len(data)) for data, meta, layer_type in layers] == [
        ("Single_cells", "shapes", 7),
        ("Single_cells cells", "shapes", 121),
        ("Single_cells points", "points", 3),
    ]
    assert all(tuple(meta["scale"]) == (1.0, 1.0) for _, meta, _ in layers)


def test_reader_shows_why_a_file_cannot_be_read(tmp_path):
    from napari.utils.notifications import notification_manager

    path = tmp_path / "cut.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(AnnotationError):
        read_geojson_layers(str(path))
    message = notification_manager.records[-1].message
    assert "cut.geojson" in message and "JSON" in message


def test_writer_refuses_without_leaving_a_file(tmp_path):
    bad_color = {"features": {"id": [""], "color": ["not a colour"]}, "shape_type": ["polygon"]}
    path = tmp_path / "out.geojson"
    with pytest.raises(AnnotationError, match="colour|color"):
        write_geojson(
            str(path), [([np.zeros((3, 2)) + [[0, 0], [0, 1], [1, 1]]], bad_color, "shapes")]
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", REAL_FILES)
def test_napari_round_trip(make_napari_viewer, annotations_dir, tmp_path, name):
    viewer = make_napari_viewer()
    source = annotations_dir / name
    layers = viewer.open(str(source), plugin="napari-ssmamba")
    assert layers and all(
        layer.metadata["napari_ssmamba"]["source"] == str(source) for layer in layers
    )
    out = tmp_path / "out.geojson"
    written = viewer.layers.save(str(out), plugin="napari-ssmamba")
    assert written == [str(out)]
    assert_files_equal(source, out)
    assert json.loads(out.read_text(encoding="utf-8"))["type"] == "FeatureCollection"


def test_reader_places_annotations_on_the_open_slide(make_napari_viewer, annotations_dir):
    viewer = make_napari_viewer()
    viewer.add_image(
        np.zeros((100, 100), dtype=np.uint8), scale=(0.499, 0.499), translate=(5.0, 7.0)
    )
    [shapes, points] = viewer.open(
        str(annotations_dir / "03012023_JN.geojson"), plugin="napari-ssmamba"
    )
    for layer in (shapes, points):
        assert tuple(layer.scale) == (0.499, 0.499) and tuple(layer.translate) == (5.0, 7.0)
    assert list(shapes.features["class_name"]) == ["Tumor"] * 3
    np.testing.assert_allclose(shapes.edge_color[:, :3], [[200 / 255, 0, 0]] * 3)


def test_annotations_keep_to_the_slide_when_a_heatmap_lies_on_top(
    make_napari_viewer, annotations_dir, tmp_path
):
    # after a run the top-most image layers are heatmaps, 224 level-0 px to a cell
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ssmamba", "cmu1_small_region")
    slide = viewer.layers[0]
    heatmap = viewer.add_image(
        np.zeros((14, 10), np.float32), scale=slide.scale * 224, translate=slide.scale * 112
    )
    source = annotations_dir / "polygon.geojson"
    [shapes] = viewer.open(str(source), plugin="napari-ssmamba")
    assert tuple(shapes.scale) == tuple(slide.scale)
    assert tuple(shapes.translate) == tuple(slide.translate)
    # a layer in the heatmap's frame (napari's new-layer button copies the active layer's) is
    # written in the slide's level-0 pixels
    shapes.scale, shapes.translate = heatmap.scale, heatmap.translate
    out = tmp_path / "out.geojson"
    viewer.layers.selection = {shapes}
    viewer.layers.save(str(out), selected=True, plugin="napari-ssmamba")
    [original], [written] = read_geojson(source), read_geojson(out)
    expected = shapely.affinity.affine_transform(original.geometry, [224, 0, 0, 224, 112, 112])
    assert written.geometry.equals_exact(expected, 1e-6)


def test_a_layer_on_one_of_two_slides_is_written_in_its_pixels(
    make_napari_viewer, slides_dir, tmp_path
):
    viewer = make_napari_viewer()
    [cmu] = viewer.open(slides_dir / "CMU-1-Small-Region.svs", plugin="napari-ssmamba")
    viewer.open(slides_dir / "OS-1-detail.ome.tif", plugin="napari-ssmamba")  # on top, other MPP
    rois = viewer.add_shapes(
        [np.array([[100, 100], [300, 400]], float)], scale=cmu.scale, translate=cmu.translate
    )
    viewer.layers.selection = {rois}
    viewer.layers.save(str(tmp_path / "rois.geojson"), selected=True, plugin="napari-ssmamba")
    [written] = read_geojson(tmp_path / "rois.geojson")
    assert written.geometry.bounds == (100, 100, 400, 300)


def test_annotations_of_another_image_are_said_to_lie_outside(
    make_napari_viewer, annotations_dir
):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ssmamba", "cmu1_small_region")  # 2,220 x 2,967 px
    with pytest.warns(UserWarning, match=r"03012023_JN.geojson: \d+ of \d+ objects lie wholly"):
        viewer.open(str(annotations_dir / "03012023_JN.geojson"), plugin="napari-ssmamba")
