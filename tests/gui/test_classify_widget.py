"""The Classify widget on the sample slide: run in a worker, layers in place and aligned."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def viewer_with_sample(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-ssmamba", "cmu1_small_region")
    return viewer


def _run(qtbot, widget):
    assert widget.run() is not None
    # not waitSignal(worker.finished): a run served from the cache can finish before it connects
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)


def _classify_rois_layer(qtbot, viewer, checkpoint):
    """A Classify widget run on the "ROIs" layer with ``checkpoint`` on the CPU."""
    from napari_ssmamba.gui.classify_widget import ClassifyWidget

    widget = ClassifyWidget(viewer)
    qtbot.addWidget(widget)
    widget.roi_combo.setCurrentText("ROIs")
    widget.model_combo.setCurrentText("Checkpoint file")
    widget.model_path.setText(str(checkpoint))
    widget.device_combo.setCurrentText("cpu")
    _run(qtbot, widget)
    return widget


def test_classify_rectangle_roi_layers_aligned(qtbot, viewer_with_sample, small_checkpoint):
    viewer = viewer_with_sample
    slide_layer = viewer.layers[0]
    mpp = np.asarray(slide_layer.scale[-2:])
    # a rectangle over tissue, level-0 px (y, x)
    roi = np.array([[800, 700], [800, 1500], [1600, 1500], [1600, 700]], float)
    shapes = viewer.add_shapes([roi], shape_type="rectangle", name="ROIs", scale=mpp)
    widget = _classify_rois_layer(qtbot, viewer, small_checkpoint)

    result = widget.result
    assert result is not None and len(result.rois) == 1
    assert widget.warning_label.isVisibleTo(widget)  # untrained: said so
    names = [layer.name for layer in viewer.layers]
    stem = slide_layer.name
    assert f"{stem} [classes]" in names and f"{stem} [LPR attention]" in names
    assert all(f"{stem} [{c} probability]" in names for c in result.class_names)
    assert shapes.features["predicted_class"][0] == result.rois[0].class_name
    roi = result.rois[0]
    assert shapes.features["prediction"][0] == f"ROI 1: {roi.class_name} {roi.confidence:.2f}"
    assert "Tumor" in widget.legend_label.text()

    labels = viewer.layers[f"{stem} [classes]"]
    # through napari's transforms: the centre of every tile shows its class, outside the ROI nothing
    for box, probs in zip(result.tile_boxes_l0, result.tile_probabilities):
        centre_yx = np.array([box[1] + box[3] / 2, box[0] + box[2] / 2])
        inside = 700 <= centre_yx[1] < 1500 and 800 <= centre_yx[0] < 1600
        value = labels.get_value(centre_yx * mpp + slide_layer.translate[-2:], world=True)
        assert value == (np.argmax(probs) + 1 if inside else 0)
    assert labels.get_value(np.array([400.0, 400.0]) * mpp, world=True) in (None, 0)

    # rerun after adding an ROI: only the new one is predicted
    shapes.add_ellipses(np.array([[2200, 1450], [200, 250]], float))  # centre, radii
    # a new shape takes none of the first one's id or result (napari copies the last row)
    assert shapes.features["id"][1] == "" and shapes.features["prediction"][1] == ""
    _run(qtbot, widget)
    assert widget.result.parameters["rois_predicted"] == 1 and len(widget.result.rois) == 2
    assert names.count(f"{stem} [classes]") == 1
    assert shapes.features["id"][1] not in ("", shapes.features["id"][0])
    assert shapes.features["prediction"][1].startswith("ROI 2: ")


def test_rois_on_glass_only_are_said_so_and_leave_no_maps(
    qtbot, viewer_with_sample, small_checkpoint
):
    viewer = viewer_with_sample
    mpp = np.asarray(viewer.layers[0].scale[-2:])
    tissue = np.array([[800, 700], [1600, 1500]], float)
    glass = np.array([[1500, 0], [2100, 300]], float)  # left of the tissue
    off_slide = np.array([[4000, 4000], [4500, 4500]], float)
    shapes = viewer.add_shapes([tissue], shape_type="rectangle", name="ROIs", scale=mpp)
    widget = _classify_rois_layer(qtbot, viewer, small_checkpoint)
    stem = viewer.layers[0].name
    assert f"{stem} [classes]" in [layer.name for layer in viewer.layers]

    shapes.data = [glass, off_slide]
    shapes.shape_type = ["rectangle", "rectangle"]
    other = viewer.add_labels(np.zeros((4, 4), np.uint8), name="other.svs [classes]")
    widget.result_layers[other.name] = other  # another slide's result
    _run(qtbot, widget)  # no tile anywhere: no error, this slide's maps of the first run go
    assert widget.result.n_tiles == 0
    assert "Nothing to classify" in widget.status_label.text()
    assert list(shapes.features["prediction"]) == [
        "ROI 1: no tissue",
        "ROI 2: outside the slide",
    ]
    # the label over the glass is black; the one over napari's black canvas is white
    assert [tuple(c) for c in shapes.text.color.array] == [(0, 0, 0, 1), (1, 1, 1, 1)]
    assert not shapes.face_color[:, 3].any()  # napari's white fill, drawn before the widget, goes
    assert not any(layer.name.startswith(f"{stem} [") for layer in viewer.layers)
    assert other in viewer.layers


def test_screenshot_overlay_where_it_must_be(qtbot, viewer_with_sample, small_checkpoint):
    viewer = viewer_with_sample
    slide_layer = viewer.layers[0]
    mpp = np.asarray(slide_layer.scale[-2:])
    roi = np.array([[1000, 800], [1000, 1400], [1600, 1400], [1600, 800]], float)
    viewer.add_shapes(
        [roi],
        shape_type="rectangle",
        name="ROIs",
        scale=mpp,
        edge_width=0,
        face_color="transparent",
    )
    widget = _classify_rois_layer(qtbot, viewer, small_checkpoint)

    labels = viewer.layers[f"{slide_layer.name} [classes]"]
    labels.opacity = 1.0
    slide_layer.visible = False
    viewer.layers["ROIs"].visible = False
    viewer.window._qt_window.resize(900, 900)
    qtbot.wait(50)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    coloured = (shot[..., :3].max(-1).astype(int) - shot[..., :3].min(-1)) > 60
    ys, xs = np.nonzero(coloured)
    assert len(ys) > 100

    # Where the painted cells must be on the canvas, from the camera: the grid cells whose centres
    # lie in the ROI span level-0 y 1024..1536 and x 768..1536 (cells of 256 px at 2 µm/px).
    result = widget.result
    grid = result.heatmap_grid
    inside = labels.data > 0
    rows, cols = np.nonzero(inside)
    oy, ox = grid.origin_l0_yx
    l0_y = (oy + rows.min() * grid.cell_l0, oy + (rows.max() + 1) * grid.cell_l0)
    l0_x = (ox + cols.min() * grid.cell_l0, ox + (cols.max() + 1) * grid.cell_l0)
    zoom = viewer.camera.zoom
    centre = np.asarray(viewer.camera.center[-2:])
    h, w = shot.shape[:2]

    def to_canvas(l0, axis):
        world = (np.asarray(l0) - 0.5) * mpp[axis]
        return (world - centre[axis]) * zoom + (h if axis == 0 else w) / 2

    expected_y, expected_x = to_canvas(l0_y, 0), to_canvas(l0_x, 1)
    assert ys.min() == pytest.approx(expected_y[0], abs=2) and ys.max() == pytest.approx(
        expected_y[1], abs=2
    )
    assert xs.min() == pytest.approx(expected_x[0], abs=2) and xs.max() == pytest.approx(
        expected_x[1], abs=2
    )
    # and nothing outside the ROI: the canvas is black beyond the painted cells
    assert (
        not coloured[: int(expected_y[0]) - 3].any()
        and not coloured[int(expected_y[1]) + 3 :].any()
    )


def _widget_beside_the_sample(qtbot, viewer):
    """A Classify widget for a viewer showing the sample slide: its warm-up starts with it."""
    from napari_ssmamba.gui.classify_widget import ClassifyWidget
    from napari_ssmamba.gui.sample_data import cmu1_small_region

    data, kwargs, _ = cmu1_small_region()[0]
    viewer.add_image(data, **kwargs)
    widget = ClassifyWidget(viewer)
    qtbot.addWidget(widget)
    return widget


def test_cancel_reports_and_keeps_napari_running(qtbot, make_napari_viewer, small_checkpoint):
    viewer = make_napari_viewer()
    widget = _widget_beside_the_sample(qtbot, viewer)
    widget.model_combo.setCurrentText("Checkpoint file")
    widget.model_path.setText(str(small_checkpoint))
    widget.device_combo.setCurrentText("cpu")
    worker = widget.run()
    widget.cancel()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=5_000)
    assert widget.status_label.text() == "Cancelled."
    assert widget.result is None and len(viewer.layers) == 1


def test_an_roi_with_holes_and_parts_is_labelled_once(qtbot, viewer_with_sample, small_checkpoint):
    import napari
    import shapely

    from napari_ssmamba.annotations import Annotation
    from napari_ssmamba.gui.layers import annotations_to_layer_data

    viewer = viewer_with_sample
    lumen = shapely.Polygon(
        shapely.box(700, 800, 1300, 1400).exterior,
        [shapely.box(900, 1000, 1100, 1200).exterior.coords],
    )
    pair = shapely.MultiPolygon(
        [shapely.box(700, 1600, 1000, 1900), shapely.box(1100, 1600, 1400, 1900)]
    )
    annotations = [Annotation(lumen, class_name="Tumor"), Annotation(pair, class_name="Stroma")]
    [(data, meta, kind)] = annotations_to_layer_data(
        annotations, mpp=viewer.layers[0].scale[-2:], name="ROIs"
    )
    viewer.add_layer(napari.layers.Layer.create(data, meta, kind))
    widget = _classify_rois_layer(qtbot, viewer, small_checkpoint)
    labels = list(viewer.layers["ROIs"].features["prediction"])
    # rows: lumen, its hole, the pair's two parts
    assert labels[0].startswith("ROI 1: ") and labels[2].startswith("ROI 2: ")
    assert labels[1] == labels[3] == ""
    assert widget.result.n_tiles > 0


def test_the_legend_lists_every_roi_and_scrolls(qtbot, viewer_with_sample, small_checkpoint):
    viewer = viewer_with_sample
    mpp = np.asarray(viewer.layers[0].scale[-2:])
    off_slide = [np.array([[4000 + 300 * i, 0], [4200 + 300 * i, 200]], float) for i in range(25)]
    viewer.add_shapes(off_slide, shape_type="rectangle", name="ROIs", scale=mpp)
    widget = _classify_rois_layer(qtbot, viewer, small_checkpoint)
    assert "ROI 25: <b>outside the slide</b>" in widget.legend_label.text()
    line = widget.legend_label.fontMetrics().lineSpacing()
    assert 0 < widget.legend_area.height() <= 12 * line < widget.legend_label.sizeHint().height()


def test_a_drawn_roi_layer_gets_the_slides_micron_units(qtbot, viewer_with_sample):
    # napari's "new shapes layer" button: the world's scale, pixel units, and napari would warn
    # "Inconsistent units across layers" and draw the scale bar without µm
    from napari_ssmamba.gui.classify_widget import ClassifyWidget

    viewer = viewer_with_sample
    widget = ClassifyWidget(viewer)
    qtbot.addWidget(widget)
    shapes = viewer.add_shapes(scale=viewer.layers.extent.step, name="drawn")
    assert [str(u) for u in shapes.units] == ["micrometer", "micrometer"]
    assert [str(u) for u in viewer.layers.extent.units] == ["micrometer", "micrometer"]
    # napari would fill what is drawn opaque white over the tissue: outlines instead
    shapes.add_rectangles(np.array([[800, 700], [1600, 1500]], float))
    assert shapes.face_color[0][3] == 0 and shapes.edge_width[0] > 1
    assert tuple(shapes.edge_color[0]) == (1, 0, 0, 1)
    image = viewer.add_image(np.zeros((4, 4)), name="pixels, not drawn")
    assert str(image.units[-1]) == "pixel"  # only shapes and points layers are relabelled


@pytest.fixture
def tissue_detections(monkeypatch) -> list:
    """The slides ``detect_tissue`` is called on from now on."""
    from napari_ssmamba.inference import tissue

    calls, detect = [], tissue.detect_tissue
    monkeypatch.setattr(tissue, "detect_tissue", lambda slide: calls.append(slide) or detect(slide))
    return calls


def test_the_model_and_tissue_are_prepared_before_run(
    qtbot, make_napari_viewer, small_checkpoint, tissue_detections
):
    # a slide open and a model chosen: the widget loads the model, moves it to the device (on
    # CUDA, captures its graphs) and detects the tissue in the background; Run then redoes none
    widget = _widget_beside_the_sample(qtbot, make_napari_viewer())
    qtbot.waitUntil(lambda: widget._warming is None, timeout=60_000)  # the bundled model
    widget.model_path.setText(str(small_checkpoint))
    widget.device_combo.setCurrentText("cpu")
    widget.model_combo.setCurrentText("Checkpoint file")  # a new choice: prepared again
    qtbot.waitUntil(
        lambda: (
            widget._warming is None
            and any(key[1:] == (str(small_checkpoint), "cpu") for key in widget._warmed)
        ),
        timeout=60_000,
    )
    assert widget.status_label.text().startswith("Ready to run on the CPU")
    assert str(small_checkpoint) in widget._models and len(tissue_detections) == 1
    model = widget._models[str(small_checkpoint)][0]
    assert model in widget._cache.model_fingerprints
    loaded = dict(widget._models)
    _run(qtbot, widget)
    assert widget.result is not None and widget.result.n_tiles > 0
    assert len(tissue_detections) == 1 and widget._models == loaded  # nothing done twice


def test_a_slide_given_its_pixel_size_is_prepared_again(qtbot, make_napari_viewer, slides_dir):
    from napari_ssmamba.gui.classify_widget import ClassifyWidget
    from napari_ssmamba.gui.slide_reader import set_layer_mpp

    viewer = make_napari_viewer()
    [layer] = viewer.open(slides_dir / "kidney-48-5.tif", plugin="napari-ssmamba")  # no MPP
    widget = ClassifyWidget(viewer)
    qtbot.addWidget(widget)
    widget.device_combo.setCurrentText("cpu")
    qtbot.waitUntil(lambda: "microns-per-pixel" in widget.status_label.text(), timeout=60_000)
    set_layer_mpp(layer, (0.5, 0.5))  # what Settings > Set MPP does
    qtbot.waitUntil(lambda: widget.status_label.text().startswith("Ready"), timeout=60_000)


def test_run_during_preparation_waits_for_it(qtbot, make_napari_viewer, tissue_detections):
    widget = _widget_beside_the_sample(qtbot, make_napari_viewer())
    assert widget._warming is not None  # started with the widget
    _run(qtbot, widget)  # the bundled model on the whole tissue, at once
    assert widget.result is not None and len(tissue_detections) == 1
    assert "tiles classified" in widget.status_label.text()  # not "Ready to run"


def test_a_model_that_cannot_be_prepared_is_named_in_the_status(
    qtbot, make_napari_viewer, tmp_path
):
    widget = _widget_beside_the_sample(qtbot, make_napari_viewer())
    qtbot.waitUntil(lambda: widget._warming is None, timeout=60_000)
    missing = tmp_path / "nowhere.safetensors"
    widget.model_path.setText(str(missing))
    widget.model_combo.setCurrentText("Checkpoint file")
    qtbot.waitUntil(
        lambda: "Could not prepare the run" in widget.status_label.text(), timeout=30_000
    )
    assert "nowhere.safetensors" in widget.status_label.text()
