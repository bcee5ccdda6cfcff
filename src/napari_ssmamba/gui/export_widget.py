"""The Export widget: write the current classification results to a folder, through ``export/``.

Results are found on the viewer: the ``classes`` labels layer the Classify widget adds carries the
:class:`~napari_ssmamba.inference.ClassificationResult` in its metadata.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_ssmamba.gui.classify_widget import RESULT_KEY, RESULT_SLIDE_KEY

KINDS = {
    "geojson": "QuPath GeoJSON (ROIs and tiles)",
    "heatmap": "Heatmap pyramidal TIFF",
    "figure": "PNG figure",
    "tiles": "Tile CSV",
}


class ExportWidget(QWidget):
    """Pick a result and a folder; Export writes the chosen files and a run record."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.written: dict[str, Path] = {}
        self._worker = None
        self.result_combo = QComboBox()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("output folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._on_browse)
        self.kind_checks = {kind: QCheckBox(label) for kind, label in KINDS.items()}
        for check in self.kind_checks.values():
            check.setChecked(True)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit)
        folder_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Result", self.result_combo)
        form.addRow("Folder", folder_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for check in self.kind_checks.values():
            layout.addWidget(check)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh)
        self._refresh()

    def _result_layers(self):
        return [layer for layer in self.viewer.layers if RESULT_KEY in layer.metadata]

    def _refresh(self, event=None) -> None:
        current = self.result_combo.currentText()
        names = [layer.name for layer in self._result_layers()]
        self.result_combo.clear()
        self.result_combo.addItems(names)
        if current in names:
            self.result_combo.setCurrentText(current)

    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder")
        if folder:
            self.folder_edit.setText(folder)

    def export(self):
        """Write the chosen outputs of the chosen result in a thread worker; return the worker."""
        from napari.utils.notifications import show_warning

        from napari_ssmamba.gui._workers import start_job

        name = self.result_combo.currentText()
        folder = self.folder_edit.text().strip()
        kinds = tuple(kind for kind, check in self.kind_checks.items() if check.isChecked())
        if not name or not folder or not kinds:
            show_warning("Choose a result (run Classify ROIs first), a folder and what to export.")
            return None
        layer = self.viewer.layers[name]
        result = layer.metadata[RESULT_KEY]
        slide = layer.metadata.get(RESULT_SLIDE_KEY)

        def job(progress, cancel):
            from napari_ssmamba.export import write_outputs

            progress(0, 1, "Exporting")
            written = write_outputs(
                result,
                Path(folder),
                run_info={"source": "napari Export widget"},
                slide=slide,
                kinds=kinds,
            )
            progress(1, 1, "Exported")
            return written

        self.export_button.setEnabled(False)
        self._worker, _ = start_job(
            job, "Exporting", self._on_returned, self._on_errored, self._on_finished
        )
        return self._worker

    def _on_returned(self, written) -> None:
        from napari.utils.notifications import show_info

        self.written = written
        self.status_label.setText("Wrote " + ", ".join(p.name for p in written.values()))
        show_info(f"Exported {len(written)} files to {next(iter(written.values())).parent}")

    def _on_errored(self, error: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status_label.setText(f"Export failed: {error}")
        show_error(f"Export failed: {error}")

    def _on_finished(self) -> None:
        self._worker = None
        self.export_button.setEnabled(True)
