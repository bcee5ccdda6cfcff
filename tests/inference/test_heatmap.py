import numpy as np
import pytest
import shapely

from napari_ssmamba.inference.heatmap import Grid, cells_inside, stitch_maps, stitch_values


def test_tile_value_lands_at_its_level0_box():
    boxes = np.array([[200, 100, 100, 100], [300, 100, 100, 100]])
    grid = Grid.covering(boxes, 50)
    assert grid.origin_l0_yx == (100.0, 200.0) and grid.shape_hw == (2, 4)
    maps, count = stitch_values(grid, boxes, np.array([[1.0, 0.0], [0.25, 0.75]]))
    assert maps[0].tolist() == [[1, 1, 0.25, 0.25]] * 2
    assert count.tolist() == [[1, 1, 1, 1]] * 2


def test_overlaps_are_averaged():
    boxes = np.array([[0, 0, 100, 100], [50, 0, 100, 100]])
    grid = Grid.covering(boxes, 50)
    maps, count = stitch_values(grid, boxes, np.array([[1.0], [0.0]]))
    assert maps[0, 0].tolist() == [1.0, 0.5, 0.0]
    assert count[0].tolist() == [1, 2, 1]
    tile_maps = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)])
    assert stitch_maps(grid, boxes, tile_maps)[0].tolist() == [1.0, 2.0, 3.0]


def test_layer_transform_puts_cells_on_their_level0_pixels():
    grid = Grid((100.0, 200.0), 50.0, (2, 4))
    scale, translate = grid.layer_transform((0.5, 0.25))
    assert scale == (25.0, 12.5)
    # cell (0, 0) covers level-0 px 200..249 in x: its centre is at 224.5 px = 56.125 µm
    assert translate == pytest.approx(((100 + 24.5) * 0.5, (200 + 24.5) * 0.25))


def test_cells_inside_uses_cell_centres():
    grid = Grid((0.0, 0.0), 10.0, (3, 3))
    inside = cells_inside(grid, [shapely.box(0, 0, 16, 30)])
    assert inside.tolist() == [[True, True, False]] * 3
