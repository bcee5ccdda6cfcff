"""Dock widget: browse a QuPath project, open its images, load the GeoJSON exported beside them."""

from __future__ import annotations

import html
from pathlib import Path

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_ssmamba.annotations import (
    QPDATA_MESSAGE,
    QuPathImage,
    QuPathProject,
    read_geojson,
    read_qupath_project,
)
from napari_ssmamba.errors import SSMambaError
from napari_ssmamba.gui.layers import align_to_layer, annotations_to_layer_data
from napari_ssmamba.gui.slide_reader import annotation_frame_layer

_COLUMNS = ("Image", "Size (px)", "Pixel size (µm)", "File")


class QuPathProjectWidget(QWidget):
    """Pick a ``project.qpproj``, list its images, open one, and load its exported annotations."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.project: QuPathProject | None = None

        self.path_edit = QLineEdit(readOnly=True, placeholderText="No project open")
        self.browse_button = QPushButton("Open project…")
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.details = QLabel(wordWrap=True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_button = QPushButton("Open image")
        self.annotations_button = QPushButton("Load annotations")
        self.geojson_button = QPushButton("Load GeoJSON file…")
        self.align_button = QPushButton("Align annotations to slide")
        self.status = QLabel(wordWrap=True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        project_row = QHBoxLayout()
        project_row.addWidget(self.path_edit)
        project_row.addWidget(self.browse_button)
        image_row = QHBoxLayout()
        image_row.addWidget(self.open_button)
        image_row.addWidget(self.annotations_button)
        file_row = QHBoxLayout()
        file_row.addWidget(self.geojson_button)
        file_row.addWidget(self.align_button)
        layout = QVBoxLayout(self)
        layout.addLayout(project_row)
        layout.addWidget(self.table)
        layout.addWidget(self.details)
        layout.addLayout(image_row)
        layout.addLayout(file_row)
        layout.addWidget(self.status)

        self.browse_button.clicked.connect(self._on_browse)
        self.table.itemSelectionChanged.connect(self._on_selection_changed)
        self.open_button.clicked.connect(self._on_open_image)
        self.annotations_button.clicked.connect(self._on_load_annotations)
        self.geojson_button.clicked.connect(self._on_load_geojson_file)
        self.align_button.clicked.connect(self._on_align)
        self._update_buttons()

    # Actions (callable from scripts and tests) ------------------------------------------------

    def load_project(self, path: str | Path) -> None:
        """Read the project at ``path`` (``project.qpproj`` or its folder) and list its images."""
        try:
            self.project = read_qupath_project(path)
        except (SSMambaError, OSError) as exc:
            self.project = None
            self._fill_table()
            self._say(str(exc), error=True)
            return
        self.path_edit.setText(str(self.project.path))
        self._fill_table()
        found = sum(image.exists for image in self.project.images)
        self._say(
            f"{len(self.project.images)} image(s), {found} found on this computer, "
            f"{len(self.project.classes)} class(es)."
        )
        if self.project.images:
            self.table.selectRow(0)

    def selected_image(self) -> QuPathImage | None:
        """The image selected in the list, if any."""
        rows = self.table.selectionModel().selectedRows()
        if self.project is None or not rows:
            return None
        return self.project.images[rows[0].row()]

    def open_image(self, image: QuPathImage) -> None:
        """Open ``image`` in the viewer with the slide reader, or say where it was expected."""
        if image.path is None:
            self._say(image.missing_message(), error=True)
            return
        try:
            self.viewer.open(str(image.path), plugin="napari-ssmamba")
        except Exception as exc:  # noqa: BLE001 - napari wraps reader errors in its own types
            self._say(f"Could not open {image.path}: {exc}", error=True)
            return
        self._say(f"Opened {image.path}.")

    def load_annotations(self, image: QuPathImage) -> list:
        """Add layers for every GeoJSON exported beside ``image``; returns the layers added."""
        assert self.project is not None
        files = self.project.geojson_files(image)
        if not files:
            message = (
                f"No GeoJSON found for '{image.name}' in {self.project.directory} (or its "
                f"export folders, or {image.data_dir})."
            )
            if image.qpdata_path is not None:
                message += (
                    " "
                    + QPDATA_MESSAGE.format(path=image.qpdata_path)
                    + (f" Save it in the project folder as '{image.stem}.geojson'.")
                )
            self._say(message, error=True)
            return []
        layers = []
        report: list[str] = []
        for path in files:
            try:
                annotations = self.project.read_annotations(path, report=report)
            except (SSMambaError, OSError) as exc:
                self._say(str(exc), error=True)
                return layers
            layers += self._add_layers(annotations, path, mpp=image.mpp)
        self._say(
            f"Loaded {', '.join(p.name for p in files)}"
            + (f" ({len(report)} geometries repaired: {report[0]}…)" if report else ".")
        )
        return layers

    def load_geojson_file(self, path: str | Path) -> list:
        """Add layers for one GeoJSON file, on the slide (``annotation_frame_layer``); returns the
        layers."""
        report: list[str] = []
        try:
            annotations = read_geojson(path, report=report)
        except (SSMambaError, OSError) as exc:
            self._say(str(exc), error=True)
            return []
        layers = self._add_layers(annotations, Path(path), mpp=None)
        slide = annotation_frame_layer(self.viewer)
        if slide is not None:  # these layers only: others may belong to another image
            align_to_layer(layers, slide)
        self._say(
            f"Loaded {Path(path).name}" + (f"; repaired: {'; '.join(report)}" if report else ".")
        )
        return layers

    # Slots ------------------------------------------------------------------------------------

    def _on_browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a QuPath project", "", "QuPath project (project.qpproj *.qpproj)"
        )
        if path:
            self.load_project(path)

    def _on_selection_changed(self) -> None:
        image = self.selected_image()
        self.details.setText(_describe(self.project, image) if image else "")
        self._update_buttons()

    def _on_open_image(self) -> None:
        image = self.selected_image()
        if image is not None:
            self.open_image(image)

    def _on_load_annotations(self) -> None:
        image = self.selected_image()
        if image is not None:
            self.load_annotations(image)

    def _on_load_geojson_file(self) -> None:
        start = str(self.project.directory) if self.project else ""
        path, _ = QFileDialog.getOpenFileName(
            self, "Load GeoJSON", start, "GeoJSON (*.geojson *.json);;QuPath data (*.qpdata)"
        )
        if path:
            self.load_geojson_file(path)

    def _on_align(self) -> None:
        slide = annotation_frame_layer(self.viewer)
        annotation_layers = [
            layer
            for layer in self.viewer.layers
            if layer.metadata.get("napari_ssmamba", {}).get("kind") == "annotations"
        ]
        if slide is not None and annotation_layers:
            align_to_layer(annotation_layers, slide)

    # Helpers ----------------------------------------------------------------------------------

    def _add_layers(self, annotations, source: Path, mpp) -> list:
        layers = []
        for data, meta, layer_type in annotations_to_layer_data(
            annotations, mpp=mpp, name=source.stem
        ):
            meta["metadata"]["napari_ssmamba"]["source"] = str(source)
            layers.append(self.viewer.add_layer(napari.layers.Layer.create(data, meta, layer_type)))
        return layers

    def _fill_table(self) -> None:
        images = self.project.images if self.project else ()
        self.table.setRowCount(len(images))
        for row, image in enumerate(images):
            size = f"{image.width} × {image.height}" if image.width and image.height else "?"
            mpp = f"{image.mpp[1]:.4g}" if image.mpp else "unknown"
            where = str(image.path) if image.path else f"missing (expected {image.expected_path})"
            for column, text in enumerate((image.name, size, mpp, where)):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(row, column, item)
        self.table.resizeColumnsToContents()
        self._update_buttons()

    def _update_buttons(self) -> None:
        image = self.selected_image()
        self.open_button.setEnabled(image is not None)
        self.annotations_button.setEnabled(image is not None)

    def _say(self, message: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #e05050;" if error else "")
        self.status.setText(message)


def _describe(project: QuPathProject, image: QuPathImage) -> str:
    lines = [f"{image.name} (entry {image.entry_id})"]
    if image.path is not None:
        lines.append(f"File: {image.path}")
    else:
        lines.append(f"File: missing; expected at {image.expected_path}")
    if image.server_type:
        lines.append(f"Server: {image.server_type.rsplit('.', 1)[-1]}")
    meta = image.server_metadata
    channels = meta.get("channels") or []
    facts = [
        f"{meta['pixelType']}" if meta.get("pixelType") else "",
        "RGB" if meta.get("isRGB") else (f"{len(channels)} channels" if channels else ""),
        f"{len(meta.get('levels') or [])} level(s)" if meta.get("levels") else "",
    ]
    if any(facts):
        lines.append(", ".join(f for f in facts if f))
    for key, value in image.metadata.items():
        lines.append(f"{key}: {value}")
    files = project.geojson_files(image)
    lines.append("GeoJSON: " + (", ".join(p.name for p in files) if files else "none exported"))
    if image.qpdata_path is not None:
        lines.append("QuPath data: data.qpdata (export it as GeoJSON to load it here)")
    title, *rest = (html.escape(line) for line in lines)
    return "<br>".join([f"<b>{title}</b>", *rest])
