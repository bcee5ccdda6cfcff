import numpy as np
import pytest

from napari_ssmamba.gui.retrain_widget import RetrainWidget


@pytest.fixture
def widget(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SSMAMBA_CONFIG_DIR", str(tmp_path / "config"))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ssmamba", "cmu1_small_region")
    return viewer, RetrainWidget(viewer)


def _draw(layer, boxes):
    for x0, y0, x1, y1 in boxes:
        layer.add_polygons([np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)])


def test_classes_from_shapes_and_tile_counts(widget):
    viewer, w = widget
    assert w.slide_combo.currentText() == "CMU-1-Small-Region"
    tissue = w.add_class("tissue", (200, 0, 0))
    _draw(tissue, [(700, 1000, 1300, 1600)])
    w.tile_spin.setValue(112)
    counts = w.tile_counts()
    assert counts == {"tissue": int(600 * 600 // (112 * 0.5 / 0.499) ** 2)}
    assert f"tissue: {counts['tissue']} tiles" in w.counts_label.text()  # follows the tile size
    assert "two classes" in w.counts_label.text()
    w.mpp_spin.setValue(0.25)
    assert f"tissue: {int(600 * 600 // (112 * 0.25 / 0.499) ** 2)} tiles" in w.counts_label.text()
    assert list(tissue.features["class_name"]) == ["tissue"]


def test_regions_off_the_slide_and_qupath_tiles_are_not_counted(widget):
    import napari
    import shapely

    from napari_ssmamba.annotations import Annotation
    from napari_ssmamba.gui.layers import annotations_to_layer_data

    viewer, w = widget
    tissue = w.add_class("tissue", (200, 0, 0))
    _draw(tissue, [(2000, 1000, 2600, 1600)])  # 2,220 px wide slide: 220 of 600 px on it
    other = w.add_class("Other")
    _draw(other, [(5000, 5000, 6000, 6000)])
    qupath = [Annotation(shapely.box(700, 700, 1300, 1300), "tile", class_name="Tumor")]
    for data, meta, kind in annotations_to_layer_data(
        qupath, mpp=viewer.layers[0].scale[-2:], name="tiles"
    ):
        viewer.add_layer(napari.layers.Layer.create(data, meta, kind))
    w.tile_spin.setValue(112)
    side = 112 * 0.5 / 0.499
    assert w.tile_counts() == {"tissue": int(220 * 600 // side**2)}
    assert "1 region(s) outside the slide left out" in w.counts_label.text()


def test_a_slide_without_pixel_size_says_how_to_give_it(make_napari_viewer, slides_dir):
    viewer = make_napari_viewer()
    viewer.open(slides_dir / "kidney-48-5.tif", plugin="napari-ssmamba")
    w = RetrainWidget(viewer)
    _draw(w.add_class("tissue"), [(10, 10, 200, 200)])
    assert w.tile_counts() == {}
    assert "Set MPP" in w.counts_label.text()


def test_new_classes_get_their_own_colours_and_the_slides_units(widget):
    from napari_ssmamba.annotations.colors import default_class_color

    viewer, w = widget
    stroma, other = w.add_class("Stroma"), w.add_class("vessels")
    assert stroma.feature_defaults["color"][0] == "#96c896"  # QuPath's Stroma
    assert other.feature_defaults["color"][0] == "#{:02x}{:02x}{:02x}".format(
        *default_class_color("vessels")
    )
    assert tuple(stroma.units) == tuple(viewer.layers[0].units)


def test_tiny_run_saves_a_model_and_keeps_annotations(widget, qtbot):
    from napari_ssmamba.model import load_checkpoint
    from napari_ssmamba.settings import load_settings

    viewer, w = widget
    tissue = w.add_class("tissue", (200, 0, 0))
    glass = w.add_class("glass", (220, 220, 220))
    _draw(tissue, [(700, 1000, 1000, 1300), (1000, 1300, 1300, 1600)])
    _draw(glass, [(1700, 100, 2000, 400), (1900, 300, 2200, 600)])
    before = [np.array(d) for d in tissue.data]
    w.arch_combo.addItem("ssmamba_test")  # not offered to users: a few kB, for tests
    w.arch_combo.setCurrentText("ssmamba_test")
    w.tile_spin.setValue(32)
    w.mpp_spin.setValue(2.0)
    w.epochs_spin.setValue(2)
    worker = w.run()
    shown = []  # the status after each progress report (connected after the widget's slot)
    worker.bridge.reported.connect(lambda *_: shown.append(w.status_label.text()))
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert w.result is not None, w.status_label.text()
    assert any(text.startswith("Training: fine-tuning: epoch 2/2") for text in shown), shown
    model, card = load_checkpoint(w.result["checkpoint"])
    assert sorted(card.class_names) == ["glass", "tissue"]
    assert card.class_colors[card.class_names.index("tissue")] == (200, 0, 0)
    assert load_settings().default_model == str(w.result["checkpoint"].resolve())
    assert all(np.array_equal(a, b) for a, b in zip(before, tissue.data))
    assert list(tissue.features["class_name"]) == ["tissue", "tissue"]
