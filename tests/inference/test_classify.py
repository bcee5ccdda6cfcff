import numpy as np
import pytest
import shapely

from napari_ssmamba.errors import SlideError
from napari_ssmamba.inference import ClassificationCache, classify_slide, run_slide


@pytest.fixture(scope="module")
def whole_tissue(small_model, sample_slide_path):
    from napari_ssmamba.slide import open_slide

    model, card = small_model
    with open_slide(sample_slide_path) as slide:
        return classify_slide(slide, model, card, device="cpu")


def test_whole_tissue_result(whole_tissue):
    r = whole_tissue
    assert r.whole_tissue and len(r.rois) == 1
    assert r.n_tiles > 20 and r.n_background_tiles > 10
    np.testing.assert_allclose(r.tile_probabilities.sum(1), 1, atol=1e-5)
    assert r.heatmaps.shape == (3, *r.labels.shape)
    assert r.rois[0].n_tiles == r.n_tiles
    expected = r.tile_probabilities.T @ r.tile_tissue_fraction / r.tile_tissue_fraction.sum()
    np.testing.assert_allclose(r.rois[0].probabilities, expected, atol=1e-6)
    assert r.attention is not None and r.attention.shape[0] >= r.labels.shape[0]


# tiles of 256 level-0 px meeting edge to edge; overlapping by half (cut into stride cells);
# overlapping by a quarter (192 does not divide 256: united as they are)
@pytest.mark.parametrize("stride", [None, 32, 48])
def test_whole_tissue_region_is_the_union_of_its_tiles(sample_slide, small_model, stride):
    import dataclasses

    model, card = small_model
    card = dataclasses.replace(card, mpp=4 * sample_slide.mpp[0])  # 64 px -> 256 level-0 px
    r = classify_slide(sample_slide, model, card, device="cpu", attention=False, stride=stride)
    assert r.parameters["tile_l0"] == 256
    x, y, w, h = r.tile_boxes_l0.T
    union = shapely.union_all(shapely.box(x, y, x + w, y + h))
    geometry = r.rois[0].geometry
    assert geometry.is_valid and geometry.equals(union)
    assert geometry.area == pytest.approx(union.area)


def test_heatmap_cells_hold_their_tile_probabilities(whole_tissue):
    r = whole_tissue
    grid = r.heatmap_grid
    for box, probs in zip(r.tile_boxes_l0[::5], r.tile_probabilities[::5]):
        i0, i1, j0, j1 = grid.cell_ranges_of([box])[0]
        assert (i1 - i0, j1 - j0) == (1, 1)  # no overlap: one cell per tile
        np.testing.assert_allclose(r.heatmaps[:, i0, j0], probs, atol=1e-6)
        assert r.labels[i0, j0] == np.argmax(probs) + 1
        # the cell's level-0 extent is the tile's box
        oy, ox = grid.origin_l0_yx
        assert (ox + j0 * grid.cell_l0, oy + i0 * grid.cell_l0) == tuple(box[:2])
    assert (r.labels > 0).sum() == r.n_tiles


def test_rois_and_cache_reclassify_only_what_changed(sample_slide, small_model):
    model, card = small_model
    cache = ClassificationCache()
    rois = [shapely.box(800, 800, 1400, 1400), shapely.Point(1500, 2200).buffer(300)]
    first = classify_slide(
        sample_slide, model, card, rois=rois, device="cpu", cache=cache, attention=False
    )
    assert first.parameters["rois_predicted"] == 2
    assert all(r.class_name in card.class_names for r in first.rois)
    moved = [rois[0], shapely.Point(1600, 2200).buffer(300)]
    second = classify_slide(
        sample_slide, model, card, rois=moved, device="cpu", cache=cache, attention=False
    )
    assert second.parameters["rois_predicted"] == 1
    np.testing.assert_allclose(second.rois[0].probabilities, first.rois[0].probabilities)
    # outside every ROI the maps are empty
    ys, xs = second.heatmap_grid.cell_centres_l0()
    outside = ~(shapely.contains_xy(moved[0], xs, ys) | shapely.contains_xy(moved[1], xs, ys))
    assert (second.labels[outside] == 0).all()


def test_warm_up_leaves_a_run_only_the_classifying(sample_slide, small_model, monkeypatch):
    from napari_ssmamba.inference import classify, tissue, warm_up

    model, card = small_model
    cache = ClassificationCache()
    seconds = warm_up(sample_slide, model, card, "cpu", cache=cache)
    assert set(seconds) == {"model_s", "tile_reader_s", "fingerprint_s", "tissue_s"}
    assert model in cache.model_fingerprints and len(cache.tissue) == 1
    redone = []
    monkeypatch.setattr(tissue, "detect_tissue", lambda slide: redone.append("tissue"))
    monkeypatch.setattr(classify, "model_fingerprint", lambda *a: redone.append("fingerprint"))
    result = classify_slide(
        sample_slide,
        model,
        card,
        rois=[shapely.box(800, 800, 1400, 1400)],
        device="cpu",
        cache=cache,
        attention=False,
    )
    assert result.n_tiles > 0 and redone == []


def test_warm_up_names_the_slide_it_cannot_prepare(data_dir, small_model):
    from napari_ssmamba.inference import warm_up
    from napari_ssmamba.slide import open_slide

    model, card = small_model
    with (
        open_slide(data_dir / "slides" / "kidney-48-5.tif") as slide,
        pytest.raises(SlideError, match="kidney-48-5.tif.*microns-per-pixel"),
    ):
        warm_up(slide, model, card, "cpu", cache=ClassificationCache())


def test_slide_without_mpp_is_a_clear_error(data_dir, small_model):
    from napari_ssmamba.slide import open_slide

    model, card = small_model
    with (
        open_slide(data_dir / "slides" / "kidney-48-5.tif") as slide,
        pytest.raises(SlideError, match="microns-per-pixel.*--mpp"),
    ):
        classify_slide(slide, model, card, device="cpu")


def test_run_slide_writes_complete_outputs(tmp_path, data_dir, small_model):
    from napari_ssmamba.export import outputs_complete

    model, card = small_model
    record = run_slide(
        data_dir / "slides" / "kidney-48-5.tif", model, card, tmp_path, mpp=2.0, device="cpu"
    )
    assert outputs_complete(tmp_path, "kidney-48-5")
    assert record["summary"]["tiles"] > 0
    assert record["run_info"]["mpp_if_missing"] == 2.0
    assert record["slide"]["mpp_yx"] == [2.0, 2.0]
    assert [roi["name"] for roi in record["summary"]["rois"]] == ["Tissue"]


def test_run_slide_keeps_the_pixel_size_a_slide_records(tmp_path, data_dir, small_model):
    model, card = small_model
    rois = [shapely.box(700, 800, 1000, 1100)]
    slide = data_dir / "slides" / "CMU-1-Small-Region.svs"
    record = run_slide(slide, model, card, tmp_path, rois=rois, mpp=0.25, device="cpu")
    assert record["slide"]["mpp_yx"] == pytest.approx([0.499, 0.499])
    assert [roi["name"] for roi in record["summary"]["rois"]] == ["ROI 1"]  # as in the figure


def test_a_linked_slide_keeps_its_name(tmp_path, data_dir, small_model):
    # data managers (git-annex, DVC) link slides to files named by their hash
    model, card = small_model
    link = tmp_path / "case-7.svs"
    link.symlink_to(data_dir / "slides" / "CMU-1-Small-Region.svs")
    rois = [shapely.box(700, 800, 1000, 1100)]
    record = run_slide(link, model, card, tmp_path / "out", rois=rois, device="cpu")
    assert record["run_info"]["slide"] == str(link)
    assert (tmp_path / "out" / "case-7.run.json").is_file()


def test_the_record_and_the_cli_give_the_widgets_verdicts(tmp_path, data_dir, small_model, capsys):
    from napari_ssmamba.cli.classify import print_record

    model, card = small_model
    beyond = shapely.box(300, 5367, 900, 5967)  # 2,400 px below the 2,967 px high sample
    rois = [shapely.box(700, 800, 1000, 1100), beyond]
    slide = data_dir / "slides" / "CMU-1-Small-Region.svs"
    with pytest.warns(UserWarning, match="outside the slide"):
        record = run_slide(slide, model, card, tmp_path, rois=rois, device="cpu")
    tissue, outside = record["summary"]["rois"]
    assert outside["verdict"] == "outside the slide" and outside["n_tiles"] == 0
    assert tissue["verdict"] == f"{tissue['class']} {tissue['confidence']:.2f}"
    print_record(record, tmp_path)
    assert "ROI 2: outside the slide, 0 tiles" in capsys.readouterr().out


def test_multiplexed_slide_is_a_clear_error(data_dir, small_model):
    from napari_ssmamba.slide import open_slide

    model, card = small_model
    with (
        open_slide(data_dir / "slides" / "small_vectra.qptiff", mpp=0.5) as slide,
        pytest.raises(SlideError, match="small_vectra.qptiff.*RGB"),
    ):
        classify_slide(slide, model, card, device="cpu")


def test_tiles_at_the_right_and_bottom_edges_are_on_the_maps(data_dir):
    from napari_ssmamba.model import default_checkpoint, load_checkpoint
    from napari_ssmamba.slide import open_slide

    model, card = load_checkpoint(default_checkpoint())  # 224 px at 0.5 µm/px: 324 px cells
    with open_slide(data_dir / "slides" / "OS-2-vsi.ome.tif") as slide:
        result = classify_slide(slide, model, card, device="cpu")
    x, y, w, h = result.tile_boxes_l0.T
    width, height = result.slide_dimensions_wh
    sticking_out = (x + w / 2 >= width) | (y + h / 2 >= height)  # their centres are off the slide
    assert sticking_out.any()
    assert (result.labels > 0).sum() == result.n_tiles  # one cell per tile: every tile shows


def test_objects_that_are_not_rois_are_left_out_and_counted(data_dir, small_model):
    from napari_ssmamba.annotations import Annotation
    from napari_ssmamba.slide import open_slide

    model, card = small_model
    rois = [
        Annotation(shapely.box(700, 800, 1000, 1100)),
        Annotation(shapely.Point(5, 5)),
        Annotation(shapely.box(0, 0, 50, 50), object_type="detection"),
        Annotation(shapely.box(5000, 5000, 5100, 5100)),  # off the 2220 x 2967 px slide
    ]
    with (
        open_slide(data_dir / "slides" / "CMU-1-Small-Region.svs") as slide,
        pytest.warns(UserWarning) as warned,
    ):
        result = classify_slide(slide, model, card, rois=rois, device="cpu")
    messages = [str(w.message) for w in warned]
    assert any(
        "1 points, lines or empty shapes, 1 detection objects left out" in m for m in messages
    )
    assert any("1 of 2 ROIs lie wholly outside the slide" in m for m in messages)
    assert len(result.rois) == 2


def test_a_slide_without_tissue_has_no_tissue_not_an_roi_outside_it():
    from types import SimpleNamespace

    from napari_ssmamba.inference import ClassificationResult

    whole_tissue = SimpleNamespace(class_name=None, geometry=shapely.Polygon())  # no tile at all
    elsewhere = SimpleNamespace(class_name=None, geometry=shapely.box(200, 200, 300, 300))
    result = SimpleNamespace(rois=[whole_tissue, elsewhere], slide_dimensions_wh=(100, 100))
    assert ClassificationResult.roi_verdict(result, 0) == "no tissue"
    assert ClassificationResult.roi_verdict(result, 1) == "outside the slide"
