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


def test_a_region_smaller_than_a_cell_gets_the_cell_it_lies_in():
    grid = Grid((0.0, 0.0), 10.0, (3, 3))
    inside = cells_inside(grid, [shapely.box(21, 12, 23, 14), shapely.box(40, 40, 42, 42)])
    assert np.argwhere(inside).tolist() == [[1, 2]]  # the second one is off the grid


def _stitch_maps_tile_by_tile(grid, boxes, tile_maps):
    """stitch_maps as written before: PIL's box filter on each tile's map in turn."""
    from PIL import Image

    total = np.zeros(grid.shape_hw)
    count = np.zeros(grid.shape_hw, dtype=np.int32)
    for box, tile_map in zip(boxes, tile_maps):
        i0, i1, j0, j1 = grid.cell_ranges_of([box])[0]
        if i1 <= i0 or j1 <= j0:  # off the grid
            continue
        image = Image.fromarray(tile_map.astype(np.float32), mode="F")
        total[i0:i1, j0:j1] += np.asarray(image.resize((j1 - j0, i1 - i0), Image.Resampling.BOX))
        count[i0:i1, j0:j1] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


@pytest.mark.parametrize("cell", [448 / 16, 448 / 5, 448 / 23, 448 / 3, 448])
def test_maps_are_resized_like_pil_tile_by_tile(cell):
    # 16 x 16 maps onto 16, 5, 23 (upsampled), 3 or 1 cells per tile side; overlapping tiles
    # (stride 224) and tiles cut by the grid's edge
    rng = np.random.default_rng(0)
    boxes = np.array([[x, y, 448, 448] for y in range(0, 1400, 224) for x in range(0, 2000, 224)])
    maps = rng.random((len(boxes), 16, 16))
    grid = Grid.covering(boxes, cell)
    grid = Grid(grid.origin_l0_yx, grid.cell_l0, (grid.shape_hw[0] - 2, grid.shape_hw[1] - 1))
    want = _stitch_maps_tile_by_tile(grid, boxes, maps)
    np.testing.assert_allclose(stitch_maps(grid, boxes, maps), want, atol=1e-6)


def test_cell_ranges_of_are_the_cells_whose_centres_lie_inside():
    boxes = np.array([[0, 0, 100, 100], [37.5, 12, 80, 61], [-20, 390, 100, 100]])
    grid = Grid((0.0, 0.0), 25.0, (16, 4))
    ranges = grid.cell_ranges_of(boxes)
    assert ranges.dtype == np.int64
    # the second box's right edge is clipped to the grid; the third lies below it (no rows)
    assert ranges.tolist() == [[0, 4, 0, 4], [0, 3, 1, 4], [16, 16, 0, 3]]
    assert grid.cell_ranges_of(boxes[1]).tolist() == [[0, 3, 1, 4]]  # one box, unnested
