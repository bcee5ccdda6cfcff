import numpy as np
import pytest
import shapely

from napari_ssmamba.inference.tiling import choose_level, plan_tiles, tile_geometry
from napari_ssmamba.inference.tissue import TissueMask


@pytest.mark.parametrize(
    ("slide_mpp", "target", "expected"),
    [
        (0.25, 0.5, 1),  # 0.5 µm/px at level 1 exactly
        (0.25, 0.6, 1),  # level 2 (1.0) would be coarser than the model
        (0.25, 1.0, 2),
        (0.25, 0.25, 0),
        (0.5, 0.25, 0),  # slide coarser than the model: level 0, upsampled
        (0.2475, 0.5, 1),  # rounding in the metadata: 0.495 counts as 0.5
    ],
)
def test_choose_level_takes_closest_level_at_or_below_target(slide_mpp, target, expected):
    assert choose_level([1.0, 2.0, 4.0, 8.0], slide_mpp, target) == expected


def test_tile_geometry_sizes_in_level0_and_read_level():
    g = tile_geometry((0.25, 0.25), [1.0, 2.0, 4.0], tile_size=224, model_mpp=0.5, stride=112)
    assert (g.tile_l0, g.stride_l0, g.level, g.read_size) == (448, 224, 1, 224)
    g = tile_geometry((0.499, 0.499), [1.0], tile_size=224, model_mpp=0.5)
    assert (g.tile_l0, g.stride_l0, g.level, g.read_size) == (224, 224, 0, 224)
    with pytest.raises(ValueError, match="stride"):
        tile_geometry((0.5, 0.5), [1.0], tile_size=224, model_mpp=0.5, stride=0)


def _geometry(tile=100, stride=None):
    return tile_geometry((1.0, 1.0), [1.0], tile_size=tile, model_mpp=1.0, stride=stride)


def test_edge_rule_keeps_tiles_half_inside_and_weights_by_overlap():
    g = _geometry(100)
    plan = plan_tiles(g, (1000, 1000), rois=[shapely.box(0, 0, 150, 100)])
    assert plan.boxes_l0.tolist() == [[0, 0, 100, 100], [100, 0, 100, 100]]
    assert sorted(plan.members[:, 2].tolist()) == pytest.approx([0.5, 1.0])
    plan = plan_tiles(g, (1000, 1000), rois=[shapely.box(0, 0, 140, 100)])
    assert plan.boxes_l0.tolist() == [[0, 0, 100, 100]]


def test_holes_are_respected():
    outer = shapely.box(0, 0, 1000, 1000)
    hole = shapely.box(300, 300, 700, 700)
    plan = plan_tiles(_geometry(100), (2000, 2000), rois=[outer.difference(hole)])
    centres = plan.boxes_l0[:, :2] + 50
    in_hole = shapely.contains_xy(hole, centres[:, 0], centres[:, 1])
    assert not in_hole.any()
    assert len(plan.boxes_l0) == 100 - 16


def test_small_roi_gets_one_centred_tile_and_shared_tiles_are_predicted_once():
    g = _geometry(100)
    plan = plan_tiles(g, (1000, 1000), rois=[shapely.box(430, 430, 470, 470)])
    assert plan.boxes_l0.tolist() == [[400, 400, 100, 100]]
    plan = plan_tiles(
        g, (1000, 1000), rois=[shapely.box(0, 0, 200, 200), shapely.box(100, 100, 300, 300)]
    )
    assert len(plan.boxes_l0) == 7  # the tile at (100, 100) serves both
    assert len(plan.members) == 8


def test_an_roi_outside_the_slide_gets_no_tile():
    # not the slide's edge tile nearest to it, which would give it a class it does not have
    beyond = [shapely.box(1200, 400, 1800, 600), shapely.box(-400, -400, -10, -10)]
    plan = plan_tiles(_geometry(100), (1000, 1000), rois=beyond)
    assert len(plan.boxes_l0) == 0 and plan.n_rois == 2
    straddling = plan_tiles(_geometry(100), (1000, 1000), rois=[shapely.box(960, 400, 1020, 440)])
    assert straddling.boxes_l0.tolist() == [[900, 370, 100, 100]]


def test_background_tiles_are_counted_not_predicted():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half is tissue; one mask cell = 100 level-0 px
    tissue = TissueMask(mask, (100.0, 100.0))
    plan = plan_tiles(_geometry(100), (1000, 1000), tissue=tissue)
    assert len(plan.boxes_l0) == 50
    assert plan.background_per_roi.tolist() == [50]
    assert (plan.boxes_l0[:, 0] < 500).all()


def test_stride_overlap():
    plan = plan_tiles(_geometry(100, stride=50), (200, 200))
    # tiles start every 50 px while they still touch the slide
    assert sorted(set(plan.boxes_l0[:, 0].tolist())) == [0, 50, 100, 150]
