import shapely

from napari_ssmamba.annotations import repair_geometry


def test_valid_geometry_is_untouched():
    box = shapely.box(0, 0, 1, 1)
    assert repair_geometry(box) == (box, None)


def test_bowtie_becomes_two_triangles():
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    fixed, message = repair_geometry(bowtie)
    assert fixed.is_valid and fixed.geom_type == "MultiPolygon" and fixed.area == 50
    assert "Self-intersection" in message


def test_spike_is_removed_and_area_kept():
    spiky = shapely.Polygon([(0, 0), (10, 0), (10, 10), (5, 10), (5, 20), (5, 10), (0, 10)])
    fixed, message = repair_geometry(spiky)
    assert fixed.is_valid and fixed.geom_type == "Polygon" and fixed.area == 100
    assert message


def test_zero_area_polygon_keeps_its_outline():
    flat = shapely.Polygon([(0, 0), (5, 5), (10, 10)])
    fixed, message = repair_geometry(flat)
    assert fixed.geom_type in ("LineString", "MultiLineString") and fixed.length > 0
    assert "no area" in message
