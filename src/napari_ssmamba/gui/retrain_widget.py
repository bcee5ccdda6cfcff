"""The Retrain widget: classes from shapes layers, tile counts, fine-tuning in a thread worker.

Classes are the ``class_name`` values of the shapes layers' features; "Add class" makes a shapes
layer for a new class with its colour, ready to draw on. Training reads copies of the shapes
(the user's layers are never changed), cuts tiles inside them at the model's MPP, splits by
region, fine-tunes (optionally after a short MAMIM pretraining) and saves the model to the
user's models folder, where it becomes the Classify widget's model at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_ssmamba.annotations.colors import default_class_color, from_hex, to_hex
from napari_ssmamba.gui.slide_reader import fit_drawn_layers_to_slides, is_slide_layer

MIN_TILES_PER_CLASS = 20


class RetrainWidget(QWidget):
    """Fine-tune a classifier on the regions drawn over a slide and make it the current model."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result = None
        self._worker = None
        self._cancel = None
        self._out_dir = None
        self._color = None  # picked with Colour…, for the next class only

        self.slide_combo = QComboBox()
        self.class_name_edit = QLineEdit()
        self.class_name_edit.setPlaceholderText("new class name")
        self.color_button = QPushButton("Colour…")
        self.color_button.clicked.connect(self._on_pick_color)
        self.add_class_button = QPushButton("Add class")
        self.add_class_button.clicked.connect(self.add_class)
        self.arch_combo = QComboBox()
        self.arch_combo.addItems(["ssmamba_tiny", "ssmamba_small"])
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(32, 1024)
        self.tile_spin.setValue(224)
        self.tile_spin.setSuffix(" px")
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.05, 16.0)
        self.mpp_spin.setDecimals(3)
        self.mpp_spin.setSingleStep(0.25)
        self.mpp_spin.setValue(0.5)
        self.mpp_spin.setSuffix(" µm/px")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 500)
        self.epochs_spin.setValue(10)
        self.pretrain_check = QCheckBox("MAMIM pretraining first")
        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)

        class_buttons = QHBoxLayout()
        class_buttons.addWidget(self.color_button)
        class_buttons.addWidget(self.add_class_button)
        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("Class", self.class_name_edit)
        form.addRow("", class_buttons)
        form.addRow("Architecture", self.arch_combo)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Resolution", self.mpp_spin)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("", self.pretrain_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.counts_label)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh)
        self.tile_spin.valueChanged.connect(self._show_counts)
        self.mpp_spin.valueChanged.connect(self._show_counts)
        self.slide_combo.currentTextChanged.connect(self._show_counts)
        self._refresh()

    # --- classes and counts -------------------------------------------------------------------

    def _slide_layer(self):
        name = self.slide_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _shapes_layers(self):
        from napari.layers import Shapes

        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Shapes) and "class_name" in layer.features
        ]

    def _regions(self, slide_layer) -> tuple[list, int]:
        """Copies of the labelled annotation polygons of every shapes layer, in the slide's
        level-0 pixels and cut to the slide (the layers stay untouched), and how many regions lie
        wholly outside it. QuPath detections and tiles are not regions to train on."""
        import shapely

        from napari_ssmamba.gui.layers import annotations_in_slide_frame

        slide_box = shapely.box(0, 0, *slide_layer.metadata["slide"].dimensions)
        annotations, outside = [], 0
        for layer in self._shapes_layers():
            for a in annotations_in_slide_frame(layer, slide_layer):
                if not (
                    a.class_name
                    and a.object_type == "annotation"
                    and a.geometry.geom_type in ("Polygon", "MultiPolygon")
                ):
                    continue
                # only the polygons: a cut along the slide's edge can leave lines and points too
                parts = shapely.get_parts(a.geometry.intersection(slide_box))
                a.geometry = shapely.union_all(
                    [part for part in parts if part.geom_type in ("Polygon", "MultiPolygon")]
                )
                if a.geometry.area > 0:
                    annotations.append(a)
                else:
                    outside += 1
        return annotations, outside

    def tile_counts(self) -> dict[str, int]:
        """Whole tiles per class that fit the drawn regions at the chosen tile size and MPP."""
        layer = self._slide_layer()
        if layer is None or layer.metadata["slide"].mpp is None:
            return {}
        return self._tile_counts(layer, self._regions(layer)[0])

    def _tile_counts(self, layer, regions) -> dict[str, int]:
        slide_mpp = sum(layer.metadata["slide"].mpp) / 2
        side = self.tile_spin.value() * self.mpp_spin.value() / slide_mpp
        counts: dict[str, int] = {}
        for region in regions:
            counts[region.class_name] = counts.get(region.class_name, 0) + int(
                region.geometry.area // side**2
            )
        return counts

    def _refresh(self, event=None) -> None:
        fit_drawn_layers_to_slides(self.viewer.layers)
        current = self.slide_combo.currentText()
        self.slide_combo.clear()
        self.slide_combo.addItems(
            [layer.name for layer in self.viewer.layers if is_slide_layer(layer)]
        )
        if current:
            self.slide_combo.setCurrentText(current)
        for layer in self._shapes_layers():
            try:
                layer.events.data.disconnect(self._show_counts)
            except (TypeError, ValueError, RuntimeError):
                pass
            layer.events.data.connect(self._show_counts)
        self._show_counts()

    def _show_counts(self, event=None) -> None:
        layer = self._slide_layer()
        if layer is None:
            self.counts_label.setText("Open a slide to train on.")
            return
        if layer.metadata["slide"].mpp is None:
            self.counts_label.setText(
                f"{layer.name} has no pixel size: set it in Plugins > SSMamba WSI > Settings "
                "(Set MPP) to train on it."
            )
            return
        regions, outside = self._regions(layer)
        counts = self._tile_counts(layer, regions)
        lines = [
            f"{name}: {n} tiles" + ("  ⚠ too few" if n < MIN_TILES_PER_CLASS else "")
            for name, n in sorted(counts.items())
        ]
        if not counts:
            lines.append("Draw regions in a shapes layer with a class to train on.")
        elif len(counts) < 2:
            lines.append("⚠ at least two classes are needed")
        if outside:
            lines.append(f"⚠ {outside} region(s) outside the slide left out")
        self.counts_label.setText("\n".join(lines))

    def _on_pick_color(self) -> None:
        name = self.class_name_edit.text().strip()
        current = QColor(*(self._color or default_class_color(name or "class")))
        color = QColorDialog.getColor(current, self, "Class colour")
        if color.isValid():
            self._color = (color.red(), color.green(), color.blue())

    def add_class(self, name: str | None = None, color: tuple[int, int, int] | None = None):
        """Add a shapes layer for class ``name`` in ``color`` (by default the one picked with
        Colour…, else QuPath's colour for the class name); regions drawn in it get the class."""
        name = name or self.class_name_edit.text().strip()
        if not name:
            self.status_label.setText("Type a class name first.")
            return None
        rgb = color or self._color or default_class_color(name)
        self._color = None
        hex_color = to_hex(rgb)
        slide_layer = self._slide_layer()
        kwargs = {}
        if slide_layer is not None:  # drawn in the slide's frame and units
            kwargs = {
                "scale": slide_layer.scale[-2:],
                "translate": slide_layer.translate[-2:],
                "units": slide_layer.units[-2:],
            }
        import pandas as pd

        features = pd.DataFrame(
            {"class_name": pd.Series([], dtype=object), "color": pd.Series([], dtype=object)}
        )
        layer = self.viewer.add_shapes(
            name=name,
            face_color=hex_color + "66",
            edge_color=hex_color,
            features=features,
            **kwargs,
        )
        layer.feature_defaults = {"class_name": name, "color": hex_color}
        layer.mode = "add_polygon"
        self._refresh()
        return layer

    # --- training -----------------------------------------------------------------------------

    def _job(self, slide, annotations, out_dir: Path, settings: dict):
        def job(progress, cancel):
            from napari_ssmamba.training.config import FinetuneConfig, PretrainConfig
            from napari_ssmamba.training.data import split_tiles, tiles_from_slide
            from napari_ssmamba.training.finetune import finetune
            from napari_ssmamba.training.mamim import pretrain
            from napari_ssmamba.training.registry import use_trained_model

            names = sorted({a.class_name for a in annotations})
            progress(0, 0, "cutting tiles from the regions")
            tiles = tiles_from_slide(
                slide,
                annotations,
                tile_size=settings["tile_size"],
                mpps=[settings["mpp"]],
                class_names=names,
            )
            train, val = split_tiles(tiles, 0.25, by="group", seed=0)
            common = {
                "arch": settings["arch"],
                "epochs": settings["epochs"],
                "device": "auto",
                "resume": False,
                "batch_size": min(32, max(2, len(train) // 4)),
                "num_workers": 0,
            }
            init = None
            if settings["pretrain"]:
                init = str(
                    pretrain(
                        PretrainConfig(out=str(out_dir / "pretrain"), **common),
                        tiles,
                        progress=progress,
                        cancel=cancel,
                    )["checkpoint"]
                )
            config = FinetuneConfig(
                out=str(out_dir),
                init=init,
                class_colors=settings["colors"],
                patience=None,
                **common,
            )
            result = finetune(
                config,
                train,
                val if len(val) else None,
                progress=progress,
                cancel=cancel,
                data_info={"slide": str(slide.path), "regions": len(annotations)},
            )
            use_trained_model(result["checkpoint"])
            return result

        return job

    def run(self):
        """Start training on the drawn regions; returns the worker."""
        import sys

        import torch

        if not torch.cuda.is_available() and "triton" not in sys.modules:
            # AdamW imports torch._dynamo, which imports Triton; Triton's import segfaults beside
            # PyQt6 here, and without CUDA it has nothing to do: mark it absent
            sys.modules["triton"] = None

        from napari_ssmamba.gui._workers import start_job
        from napari_ssmamba.training.registry import user_models_dir

        layer = self._slide_layer()
        if layer is None or layer.metadata["slide"].mpp is None:
            self._show_counts()  # says what is missing: a slide, or its pixel size
            self.status_label.setText("Nothing to train on yet: see above.")
            return None
        annotations = self._regions(layer)[0]
        if len({a.class_name for a in annotations}) < 2:
            self.status_label.setText(
                "Draw regions of at least two classes on the slide (regions outside it and QuPath "
                "tiles or detections do not count)."
            )
            return None
        colors = {}
        for shapes in self._shapes_layers():
            for name, color in zip(shapes.features["class_name"], shapes.features.get("color", [])):
                if name and isinstance(color, str) and color.startswith("#"):
                    colors[name] = list(from_hex(color))
        settings = {
            "arch": self.arch_combo.currentText(),
            "tile_size": self.tile_spin.value(),
            "mpp": self.mpp_spin.value(),
            "epochs": self.epochs_spin.value(),
            "pretrain": self.pretrain_check.isChecked(),
            "colors": colors,
        }
        out_dir = self._out_dir = user_models_dir() / time.strftime("retrained-%Y%m%d-%H%M%S")
        self.status_label.setText("Training…")
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._worker, self._cancel = start_job(
            self._job(layer.metadata["slide"], annotations, out_dir, settings),
            "Retrain",
            self._on_returned,
            self._on_errored,
            self._on_finished,
            on_progress=self._on_progress,
        )
        return self._worker

    def cancel(self) -> None:
        if self._cancel is not None and not self._cancel.is_set():
            self._cancel.set()
            self.status_label.setText("Cancelling after the current batch…")

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self._cancel is not None and not self._cancel.is_set():
            steps = f" (step {done} of {total})" if total else ""
            self.status_label.setText(f"Training: {message}{steps}")

    def _on_finished(self) -> None:
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_errored(self, error: Exception) -> None:
        from napari_ssmamba.errors import CancelledError

        stopped = (
            "Cancelled." if isinstance(error, CancelledError) else f"Training stopped: {error}"
        )
        if self._out_dir.exists():
            stopped += (
                f" What it wrote so far is in {_breakable(self._out_dir)}; delete it if you don't "
                "need it."
            )
        self.status_label.setText(stopped)

    def _on_returned(self, result) -> None:
        self.result = result
        history = result["history"]
        metrics = result["metrics"]
        summary = (
            f"val accuracy {metrics['accuracy']:.3f}, balanced {metrics['balanced_accuracy']:.3f}"
            if metrics
            else f"train loss {history[-1]['train_loss']:.4f}"
        )
        self.status_label.setText(
            f"Saved {_breakable(result['checkpoint'])} ({summary}). It is now the model of the "
            "Classify widget, and the default model of new sessions (Settings changes that)."
        )
        self._point_classify_widgets(result["checkpoint"])

    def _point_classify_widgets(self, checkpoint) -> None:
        """Make open Classify widgets use ``checkpoint`` now, and open Settings widgets show it as
        the default model (the settings file covers new ones)."""
        from napari_ssmamba.gui._docks import docked_widgets
        from napari_ssmamba.gui.classify_widget import ClassifyWidget
        from napari_ssmamba.gui.settings_widget import SettingsWidget

        for classify in docked_widgets(self.viewer, ClassifyWidget):
            classify.use_model(checkpoint)
        for settings in docked_widgets(self.viewer, SettingsWidget):
            settings.show_default_model(checkpoint)


def _breakable(path) -> str:
    """A path a word-wrapping label may break after each separator (a long one would widen the
    dock and squeeze the form)."""
    return str(path).replace("/", "/\u200b")
