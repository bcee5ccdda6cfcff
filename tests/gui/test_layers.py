import math

import numpy as np
import pytest
import shapely
from napari.layers import Layer, Points, Shapes

from napari_ssmamba.annotations import Annotation, AnnotationRepairWarning, read_geojson
from napari_ssmamba.gui.layers import (
    align_to_layer,
    annotations_to_layer_data,
    layer_to_annotations,
)


def to_layers(annotations, **kwargs):
    return [
        Layer.create(*layer_data) for layer_data in annotations_to_layer_data(annotations, **kwargs)
    ]


def from_layers(layers):
    return [a for layer in layers for a in layer_to_annotations(layer)]


def by_id(annotations):
    return {a.id: a for a in annotations}


HOLES = Annotation(
    shapely.Polygon(
        [(0, 0), (100, 0), (100, 100), (0, 100)], [[(10, 10), (30, 10), (30, 30), (10, 30)]]
    ),
    class_name="Tumor",
    measurements={"Area": 9600.0},
)
MULTI = Annotation(
    shapely.MultiPolygon([shapely.box(200, 0, 300, 50), shapely.box(400, 0, 450, 50)]),
    class_name="Stroma",
)
LINE = Annotation(shapely.LineString([(0, 0), (5, 5), (9, 0)]), name="cut")
POINTS = Annotation(shapely.MultiPoint([(1, 1), (2, 3)]), name="calibration")
CELL = Annotation(
    shapely.box(0, 0, 8, 8),
    object_type="cell",
    class_name="Immune cells",
    nucleus_geometry=shapely.box(2, 2, 5, 5),
    measurements={"Nucleus: Area": 9.0},
)


def test_layer_kinds_and_features():
    layers = to_layers([HOLES, MULTI, LINE, POINTS, CELL], mpp=(0.25, 0.5), name="roi")
    assert [(layer.name, type(layer).__name__, len(layer.data)) for layer in layers] == [
        ("roi", "Shapes", 5),  # polygon + hole outline, two parts, one line
        ("roi cells", "Shapes", 1),
        ("roi points", "Points", 2),
    ]
    shapes = layers[0]
    assert shapes.shape_type == ["polygon", "path", "polygon", "polygon", "path"]
    assert list(shapes.features["role"]) == ["", "hole", "", "", ""]
    assert list(shapes.features["class_name"]) == [
        "Tumor",
        "",
        "Stroma",
        "Stroma",
        "",
    ]  # holes unlabelled
    assert shapes.features["Area"][0] == 9600.0 and math.isnan(shapes.features["Area"][2])
    assert tuple(shapes.scale) == (0.25, 0.5)
    np.testing.assert_allclose(shapes.edge_color[0], [200 / 255, 0, 0, 1])  # Tumor's QuPath colour
    # napari data are (y, x) level-0 pixels
    np.testing.assert_allclose(shapes.data[2], [[0, 300], [50, 300], [50, 200], [0, 200]])
    np.testing.assert_allclose(layers[2].data, [[1, 1], [3, 2]])


def test_unedited_layers_give_back_the_exact_annotations(annotations_dir):
    for path in sorted(annotations_dir.rglob("*.geojson")):
        before = read_geojson(path)
        after = by_id(from_layers(to_layers(before)))
        assert after.keys() == by_id(before).keys(), path
        for a in before:
            b = after[a.id]
            assert b.geometry.equals_exact(a.geometry, 1e-9)
            assert (b.object_type, b.class_name, b.color, b.name, b.locked) == (
                a.object_type,
                a.class_name,
                a.color,
                a.name,
                a.locked,
            )
            assert b.measurements == a.measurements


def test_holes_parts_and_nuclei_survive():
    after = by_id(from_layers(to_layers([HOLES, MULTI, LINE, POINTS, CELL])))
    for a in (HOLES, MULTI, LINE, POINTS, CELL):
        assert after[a.id].geometry.equals(a.geometry)
    assert after[CELL.id].nucleus_geometry.equals(CELL.nucleus_geometry)


def test_edited_polygon_keeps_its_hole():
    [layer] = to_layers([HOLES])
    layer.data = [layer.data[0] + 5, layer.data[1]]  # move the outline, not the hole
    [annotation] = layer_to_annotations(layer)
    assert annotation.id == HOLES.id and annotation.class_name == "Tumor"
    assert annotation.geometry.equals(
        shapely.Polygon(
            [(5, 5), (105, 5), (105, 105), (5, 105)], [[(10, 10), (30, 10), (30, 30), (10, 30)]]
        )
    )


def test_shapes_drawn_in_napari_become_new_annotations():
    layer = Shapes(name="drawn")
    layer.add_rectangles(np.array([[0, 0], [10, 20]]))
    layer.add_polygons([np.array([[0, 0], [0, 10], [10, 10]])])
    layer.add_lines(np.array([[0, 0], [5, 5]]))
    layer.add_ellipses(np.array([[50, 50], [10, 20]]))  # centre (y, x), radii
    rectangle, triangle, line, ellipse = layer_to_annotations(layer)
    assert len({rectangle.id, triangle.id, line.id, ellipse.id}) == 4
    assert rectangle.geometry.equals(shapely.box(0, 0, 20, 10))
    assert triangle.geometry.area == 50 and line.geometry.geom_type == "LineString"
    assert ellipse.is_ellipse and ellipse.geometry.area == pytest.approx(math.pi * 200, rel=0.01)
    assert all(a.class_name is None and a.object_type == "annotation" for a in (rectangle, ellipse))


def test_drawing_into_a_read_layer_uses_empty_defaults():
    [layer] = to_layers([MULTI])
    layer.add_polygons([np.array([[0, 0], [0, 10], [10, 10]])])
    multi, drawn = layer_to_annotations(layer)
    assert multi.id == MULTI.id and drawn.id != MULTI.id
    assert drawn.class_name is None and drawn.measurements == {}


def test_labels_set_by_a_widget_are_written():
    [layer] = to_layers([MULTI])
    layer.features["class_name"] = "Necrosis"
    layer.features["color"] = "#323232"
    layer.features["probability"] = 0.75
    [annotation] = layer_to_annotations(layer)
    assert (annotation.class_name, annotation.color) == ("Necrosis", (50, 50, 50))
    assert annotation.measurements == {"probability": 0.75}


def test_bow_tie_is_repaired_with_a_warning():
    layer = Shapes([np.array([[0, 0], [10, 10], [0, 10], [10, 0]])], shape_type="polygon")
    with pytest.warns(AnnotationRepairWarning, match="shape 0"):
        [annotation] = layer_to_annotations(layer)
    assert annotation.geometry.is_valid and annotation.geometry.area == 50


def test_points_layer_and_layer_data_tuples():
    points = Points(np.array([[1.0, 2.0], [3.0, 4.0]]))
    first, second = layer_to_annotations(points.as_layer_data_tuple())
    assert (first.geometry.x, first.geometry.y) == (2.0, 1.0)
    assert first.id != second.id


def test_copies_of_a_shape_get_their_own_id():
    [layer] = to_layers([MULTI])
    layer.add(layer.data[1] + 3, shape_type="polygon")
    layer.features.loc[2] = layer.features.loc[1]  # a pasted copy carries the original's features
    original, copy = layer_to_annotations(layer)
    assert original.id == MULTI.id and original.geometry.equals(MULTI.geometry)
    assert copy.id != MULTI.id and copy.class_name == "Stroma"
    assert copy.geometry.equals(shapely.box(403, 3, 453, 53))


def test_hole_outline_left_alone_is_reported():
    [layer] = to_layers([HOLES])
    layer.selected_data = {0}
    layer.remove_selected()
    with pytest.warns(AnnotationRepairWarning, match="only hole outlines"):
        assert layer_to_annotations(layer) == []


def test_empty_input_gives_a_layer_to_draw_in():
    [(data, meta, layer_type)] = annotations_to_layer_data([])
    assert (data, layer_type) == ([], "shapes")
    assert layer_to_annotations(Layer.create(data, meta, layer_type)) == []
    assert layer_to_annotations(Points()) == []


def test_align_to_layer():
    [layer] = to_layers([MULTI])
    slide = Shapes(scale=(0.5, 0.5), translate=(10, 20))
    align_to_layer([layer], slide)
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (10, 20)


def test_rois_drawn_in_another_frame_land_in_slide_pixels(make_napari_viewer):
    """A ROI on a pixel-unit shapes layer maps through world coordinates to level-0 pixels."""
    import numpy as np

    from napari_ssmamba.gui.layers import annotations_in_slide_frame

    viewer = make_napari_viewer()
    slide_layer = viewer.add_image(np.zeros((400, 300), np.uint8), scale=(0.5, 0.5), translate=(10, 20))
    # the same level-0 box (x 40..100, y 60..160) drawn on a layer in slide frame and in world px
    in_frame = viewer.add_shapes([[[60, 40], [160, 100]]], shape_type="rectangle",
                                 scale=(0.5, 0.5), translate=(10, 20))
    in_world = viewer.add_shapes([[[40, 40], [90, 70]]], shape_type="rectangle")
    expected = annotations_in_slide_frame(in_frame, slide_layer)[0].geometry
    mapped = annotations_in_slide_frame(in_world, slide_layer)[0].geometry
    assert expected.bounds == (40.0, 60.0, 100.0, 160.0)
    assert mapped.symmetric_difference(expected).area < 1e-6
