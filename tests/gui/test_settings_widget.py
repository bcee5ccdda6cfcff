import pytest

from napari_ssmamba.gui.settings_widget import SettingsWidget
from napari_ssmamba.settings import load_settings


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = SettingsWidget(viewer)
    qtbot.addWidget(widget)
    return widget


def test_device_and_model_are_saved(widget):
    widget.device.setCurrentText("cpu")
    widget.model_path.setText("/models/colon.safetensors")
    widget.model_path.editingFinished.emit()
    assert load_settings().device == "cpu"
    assert load_settings().default_model == "/models/colon.safetensors"
    widget.model_path.setText("")
    widget.model_path.editingFinished.emit()
    assert load_settings().default_model is None


def test_device_reaches_an_open_classify_widget(widget, qtbot):
    from napari_ssmamba.gui.classify_widget import ClassifyWidget

    classify = ClassifyWidget(widget.viewer)
    widget.viewer.window.add_dock_widget(classify, name="Classify ROIs")
    widget.device.setCurrentText("cuda")
    widget.device.setCurrentText("cpu")
    assert classify.device_combo.currentText() == "cpu"


def test_the_default_model_follows_retrain_and_back(widget, tmp_path):
    # Retrain makes its model the default; Settings shows it, and clearing it brings the open
    # Classify widget back to the bundled model
    from napari_ssmamba.gui.classify_widget import BUNDLED_MODEL, CHECKPOINT_FILE, ClassifyWidget
    from napari_ssmamba.gui.retrain_widget import RetrainWidget
    from napari_ssmamba.training.registry import use_trained_model

    classify, retrain = ClassifyWidget(widget.viewer), RetrainWidget(widget.viewer)
    for dock, name in [(classify, "Classify ROIs"), (retrain, "Retrain"), (widget, "Settings")]:
        widget.viewer.window.add_dock_widget(dock, name=name)
    trained = tmp_path / "model.safetensors"
    use_trained_model(trained)
    retrain._point_classify_widgets(trained)
    assert widget.model_path.text() == str(trained)
    assert classify.model_combo.currentText() == CHECKPOINT_FILE
    assert classify.model_path.text() == str(trained)
    widget.model_path.clear()
    widget.model_path.editingFinished.emit()
    assert load_settings().default_model is None
    assert classify.model_combo.currentText() == BUNDLED_MODEL


def test_set_mpp_rescales_selected_slide_layers(widget, slides_dir):
    viewer = widget.viewer
    [layer] = viewer.open(slides_dir / "kidney-48-5.tif", plugin="napari-ssmamba")
    points = viewer.add_points([[10, 10]], name="not a slide")  # drawn over it, in its pixels
    roi = viewer.add_shapes(
        [[[40, 20], [40, 60], [80, 60]]], shape_type="polygon", name="ROI", scale=(2, 2)
    )
    viewer.layers.selection = {layer}
    assert widget.set_mpp.isEnabled()
    widget.mpp.setValue(0.25)
    widget.set_mpp.click()
    assert tuple(layer.scale) == (0.25, 0.25)
    # what was drawn over the slide stays on the same pixels of it
    assert list(points.data_to_world([10, 10])) == [2.5, 2.5]
    assert list(roi.data_to_world([40, 20])) == [20.0, 10.0]
    assert [str(u) for u in roi.units] == ["micrometer", "micrometer"]
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["mpp"] == (0.25, 0.25)
    assert layer.metadata["slide"].mpp == (0.25, 0.25)
    viewer.layers.selection = {viewer.layers["not a slide"]}
    assert not widget.set_mpp.isEnabled()


def test_set_mpp_leaves_another_slide_of_the_same_name_alone(widget, slides_dir):
    viewer = widget.viewer
    first, second = (
        viewer.open(slides_dir / "kidney-48-5.tif", plugin="napari-ssmamba")[0] for _ in range(2)
    )
    assert second.name == f"{first.name} [1]"  # napari's name for the second
    viewer.layers.selection = {first}
    widget.mpp.setValue(0.25)
    widget.set_mpp.click()
    assert tuple(first.scale) == (0.25, 0.25) and tuple(second.scale) == (1.0, 1.0)
