"""Settings dock widget: compute device, default model, and the pixel size of slide layers."""

from __future__ import annotations

import dataclasses

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_ssmamba.gui.slide_reader import is_slide_layer, set_layer_mpp
from napari_ssmamba.settings import DEVICES, load_settings, save_settings
from napari_ssmamba.slide.properties import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP

CHECKPOINT_FILTER = "SSMamba checkpoints (*.safetensors);;All files (*)"


class SettingsWidget(QWidget):
    """Device and default model (saved in the user settings file), and "Set MPP" for the
    selected slide layers."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._settings = load_settings()

        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setCurrentText(self._settings.device)
        self.device.setToolTip("auto: the GPU when CUDA is available, else the CPU")

        self.model_path = QLineEdit(self._settings.default_model or "")
        self.model_path.setPlaceholderText("bundled default model")
        self.browse = QPushButton("Browse…")
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_path)
        model_row.addWidget(self.browse)

        self.mpp = QDoubleSpinBox()
        self.mpp.setDecimals(4)
        self.mpp.setRange(MIN_PLAUSIBLE_MPP, MAX_PLAUSIBLE_MPP)
        self.mpp.setSingleStep(0.05)
        self.mpp.setValue(0.5)
        self.mpp.setSuffix(" µm/px")
        self.set_mpp = QPushButton("Set MPP of selected slide layers")
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("Default model", model_row)
        form.addRow("Pixel size", self.mpp)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.set_mpp)
        layout.addWidget(self.status)
        layout.addStretch()

        self.device.currentTextChanged.connect(self._on_device_changed)
        self.model_path.editingFinished.connect(self._on_model_path_edited)
        self.browse.clicked.connect(self._on_browse_clicked)
        self.set_mpp.clicked.connect(self._on_set_mpp_clicked)
        self.viewer.layers.selection.events.changed.connect(self._on_selection_changed)
        self._on_selection_changed()

    def _save(self, **changes) -> None:
        self._settings = dataclasses.replace(self._settings, **changes)
        path = save_settings(self._settings)
        self.status.setText(f"Saved to {path}")

    def show_default_model(self, checkpoint) -> None:
        """Show ``checkpoint`` as the default model, as another widget saved it."""
        self._settings = load_settings()
        self.model_path.setText(str(checkpoint or ""))

    def _on_device_changed(self, device: str) -> None:
        """Save the device and switch the open Classify widgets to it (new ones read the file)."""
        self._save(device=device)
        for classify in self._classify_widgets():
            classify.device_combo.setCurrentText(device)

    def _on_model_path_edited(self) -> None:
        """Save the default model and switch the open Classify widgets to it."""
        default_model = self.model_path.text().strip() or None
        if default_model == self._settings.default_model:
            return
        self._save(default_model=default_model)
        for classify in self._classify_widgets():
            classify.use_model(default_model)

    def _classify_widgets(self) -> list:
        from napari_ssmamba.gui._docks import docked_widgets
        from napari_ssmamba.gui.classify_widget import ClassifyWidget

        return docked_widgets(self.viewer, ClassifyWidget)

    def _on_browse_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Default model", self.model_path.text(),
                                              CHECKPOINT_FILTER)
        if path:
            self.model_path.setText(path)
            self._on_model_path_edited()

    def _selected_slide_layers(self) -> list:
        return [layer for layer in self.viewer.layers.selection if is_slide_layer(layer)]

    def _on_selection_changed(self, event=None) -> None:
        layers = self._selected_slide_layers()
        self.set_mpp.setEnabled(bool(layers))
        known = [layer.metadata.get("mpp") for layer in layers if layer.metadata.get("mpp")]
        if known:
            self.mpp.setValue(float(known[0][1]))

    def _on_set_mpp_clicked(self) -> None:
        value = self.mpp.value()
        layers = self._selected_slide_layers()
        slides = [layer for layer in self.viewer.layers if is_slide_layer(layer)]
        for layer in layers:
            set_layer_mpp(layer, (value, value), self._drawn_over(layer, slides))
        self.status.setText(f"Pixel size {value:g} µm/px set on "
                            + ", ".join(layer.name for layer in layers))

    def _drawn_over(self, slide_layer, slides) -> list:
        """The layers that move with ``slide_layer``: with one slide open, every other layer;
        with several, the result layers named after it (never another slide)."""
        if slides == [slide_layer]:
            return [layer for layer in self.viewer.layers if layer is not slide_layer]
        prefix = f"{slide_layer.name} ["
        return [
            layer
            for layer in self.viewer.layers
            if layer.name.startswith(prefix) and not is_slide_layer(layer)
        ]
