"""The Classify ROIs widget: pick a slide, ROIs and a model; Run shows classes, heatmaps and attention.

The widget only routes: the work is :func:`napari_ssmamba.inference.classify_slide`, run in a
thread worker. Results are laid over the slide layer with scale and translate taken from it, so
they stay aligned at every zoom. Predicted classes go to the ``predicted_class`` and
``confidence`` feature columns of the ROI layer, never to ``class_name`` (the ROI's label).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_ssmamba.gui.slide_reader import fit_drawn_layers_to_slides, is_slide_layer

WHOLE_TISSUE = "(whole tissue)"
BUNDLED_MODEL = "Bundled default model"
CHECKPOINT_FILE = "Checkpoint file"
HEATMAP_COLORMAP = "magma"
ATTENTION_COLORMAP = "inferno"
#: values below this fade to transparent, so that empty cells and low values show the slide
FADE_BELOW = 0.25
LABELS_LAYER = "classes"
ATTENTION_LAYER = "LPR attention"
UNTRAINED_TEXT = "UNTRAINED model: the classes shown are not a result."
#: keys of the labels layer's metadata that carry a run's result and slide (the Export widget's)
RESULT_KEY, RESULT_SLIDE_KEY = "classification_result", "classification_slide"
#: what a newly drawn ROI starts with in the columns Run writes: no id (Run gives it one), no result
_ROW_DEFAULTS = {"id": "", "predicted_class": "", "prediction": "", "confidence": float("nan")}


def fading_colormap(name: str, fade_below: float = FADE_BELOW):
    """napari colormap ``name`` whose opacity rises from 0 at value 0 to 1 at ``fade_below``."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    base = ensure_colormap(name)
    controls = np.linspace(0.0, 1.0, 33)
    colors = base.map(controls)
    colors[:, 3] = np.clip(controls / fade_below, 0.0, 1.0)
    return Colormap(colors=colors, controls=controls, name=f"{name} (fading)")


class ClassifyWidget(QWidget):
    """Classify the ROIs of a slide layer (or its whole tissue) and show the result in place."""

    def __init__(self, napari_viewer):
        from napari_ssmamba.inference import ClassificationCache
        from napari_ssmamba.settings import DEVICES, load_settings

        super().__init__()
        self.viewer = napari_viewer
        self.result = None
        self.result_layers: dict[str, object] = {}
        self._cache = ClassificationCache()
        self._models: dict[str, tuple] = {}
        self._worker = None
        self._cancel = None
        self._run_slide_layer = None
        self._run_roi_layer = None
        self._warming = None  # set when the background warm-up in flight is done
        self._warmed = set()  # (slide, model, device) choices warmed up, or run
        settings = load_settings()

        self.slide_combo = QComboBox()
        self.roi_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.addItems([BUNDLED_MODEL, CHECKPOINT_FILE])
        self.model_path = QLineEdit(settings.default_model or "")
        self.model_path.setPlaceholderText("model.safetensors or its folder")
        if settings.default_model:
            self.model_combo.setCurrentText(CHECKPOINT_FILE)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._on_browse)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setCurrentText(settings.device)
        self.stride_spin = QSpinBox()
        self.stride_spin.setRange(0, 4096)
        self.stride_spin.setSpecialValueText("tile size (no overlap)")
        self.stride_spin.setSuffix(" px")
        self.stride_spin.setToolTip(
            "Tile stride in model-input pixels; smaller than the tile "
            "size means overlapping tiles and a finer heatmap."
        )
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.warning_label = QLabel(UNTRAINED_TEXT)
        self.warning_label.setStyleSheet("color: white; background: #b00020; padding: 4px;")
        self.warning_label.setWordWrap(True)
        self.warning_label.setVisible(False)
        self.legend_label = QLabel("")
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        self.legend_label.setAlignment(Qt.AlignmentFlag.AlignTop)
        # every ROI is listed; a long list scrolls instead of crowding out the docks below
        self.legend_area = QScrollArea()
        self.legend_area.setWidget(self.legend_label)
        self.legend_area.setWidgetResizable(True)
        self.legend_area.setFrameShape(QScrollArea.Shape.NoFrame)
        self.legend_area.setFixedHeight(0)
        self.attention_check = QCheckBox("Show LPR attention")
        self.attention_check.toggled.connect(self._on_attention_toggled)
        self.attention_slider = QSlider(Qt.Orientation.Horizontal)
        self.attention_slider.setRange(0, 100)
        self.attention_slider.setValue(60)
        self.attention_slider.valueChanged.connect(self._on_attention_opacity)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_path)
        model_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("ROIs", self.roi_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", model_row)
        form.addRow("Device", self.device_combo)
        form.addRow("Stride", self.stride_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        attention_row = QHBoxLayout()
        attention_row.addWidget(self.attention_check)
        attention_row.addWidget(QLabel("opacity"))
        attention_row.addWidget(self.attention_slider)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.warning_label)
        layout.addWidget(self.status_label)
        layout.addWidget(self.legend_area)
        layout.addLayout(attention_row)
        layout.addStretch(1)

        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layer_choices)
        for choice in (self.slide_combo, self.model_combo, self.device_combo):
            choice.currentTextChanged.connect(self._warm_up)
        self.model_path.editingFinished.connect(self._warm_up)
        self._refresh_layer_choices()

    # --- choices -----------------------------------------------------------------------------

    def _refresh_layer_choices(self, event=None) -> None:
        from napari.layers import Shapes

        fit_drawn_layers_to_slides(self.viewer.layers)
        slide_names = [layer.name for layer in self.viewer.layers if is_slide_layer(layer)]
        for name in slide_names:  # connecting twice is a no-op in napari
            self.viewer.layers[name].events.scale.connect(self._on_slide_rescaled)
        roi_names = [layer.name for layer in self.viewer.layers if isinstance(layer, Shapes)]
        _set_items(self.slide_combo, slide_names)
        _set_items(self.roi_combo, [WHOLE_TISSUE, *roi_names])
        self._warm_up()

    def _on_slide_rescaled(self, event=None) -> None:
        """A new pixel size (Settings > Set MPP) changes what a run needs: prepare it again."""
        self._warmed.clear()
        self._warm_up()

    def use_model(self, checkpoint: str | Path | None) -> None:
        """Run with ``checkpoint`` from now on (None: the bundled default model)."""
        if checkpoint is None:
            self.model_combo.setCurrentText(BUNDLED_MODEL)
            self.model_path.clear()
        else:
            self.model_path.setText(str(checkpoint))
            self.model_combo.setCurrentText(CHECKPOINT_FILE)
        self._warm_up()

    def _on_browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model checkpoint", "", "Checkpoints (*.safetensors *.json)"
        )
        if path:
            self.model_path.setText(path)
            self.model_combo.setCurrentText(CHECKPOINT_FILE)
            self._warm_up()

    def _checkpoint(self) -> Path | None:
        if self.model_combo.currentText() == CHECKPOINT_FILE and self.model_path.text().strip():
            return Path(self.model_path.text().strip())
        return None

    # --- running -----------------------------------------------------------------------------

    def run(self):
        """Classify with the current choices in a thread worker; return the worker (None if not started)."""
        from napari.utils.notifications import show_warning

        if self._worker is not None:
            return None
        slide_layer = (
            self.viewer.layers[self.slide_combo.currentText()]
            if self.slide_combo.currentText()
            else None
        )
        if slide_layer is None:
            show_warning("Open a slide first (File > Open, or File > Open Sample > CMU-1).")
            return None
        roi_layer = None
        rois = None
        if self.roi_combo.currentText() not in ("", WHOLE_TISSUE):
            roi_layer = self.viewer.layers[self.roi_combo.currentText()]
            rois = self._rois_of(roi_layer, slide_layer)
            if not rois:
                show_warning(
                    f"'{roi_layer.name}' has no rectangle, polygon or ellipse to classify."
                )
                return None
        self._run_slide_layer, self._run_roi_layer = slide_layer, roi_layer
        from napari_ssmamba.gui._workers import start_job

        slide, checkpoint, device = self._choice()
        self._warmed.add(_choice_key(slide, checkpoint, device))
        self._set_running(True)
        self.status_label.setText("Classifying…")
        self._worker, self._cancel = start_job(
            self._job(slide, rois, checkpoint, device, self.stride_spin.value() or None),
            "Classifying ROIs",
            on_returned=self._on_returned,
            on_errored=self._on_errored,
            on_finished=self._on_finished,
        )
        return self._worker

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.status_label.setText("Cancelling after the current batch…")

    def _job(self, slide, rois, checkpoint, device, stride):
        warming = self._warming

        def job(progress, cancel):
            from napari_ssmamba.inference import classify_slide
            from napari_ssmamba.progress import raise_if_cancelled

            if warming is not None:  # it prepares what the run needs: wait rather than redo it
                progress(0, 0, "Waiting for the model to be prepared")
                while not warming.wait(0.1):
                    raise_if_cancelled(cancel, "classification")
            model, card = self._load_model(checkpoint)
            return classify_slide(
                slide,
                model,
                card,
                rois=rois,
                stride=stride,
                device=device,
                progress=progress,
                cancel=cancel,
                cache=self._cache,
            )

        return job

    def _choice(self) -> tuple:
        """The slide (None without a slide layer), checkpoint (None: bundled) and device chosen."""
        name = self.slide_combo.currentText()
        slide = self.viewer.layers[name].metadata["slide"] if name else None
        return slide, self._checkpoint(), self.device_combo.currentText()

    def _warm_up(self, *_) -> None:
        """Prepare the chosen model on the chosen device, and the slide's tile reader and tissue
        mask, in the background (:func:`~napari_ssmamba.inference.warm_up`), once per choice: the
        first Run then starts at once instead of after seconds of GPU kernel compilation."""
        from napari_ssmamba.gui._workers import start_job

        slide, checkpoint, device = self._choice()
        if slide is None or self._warming is not None or self._worker is not None:
            return
        key = _choice_key(slide, checkpoint, device)
        if key in self._warmed:
            return
        self._warmed.add(key)
        done = self._warming = threading.Event()

        def job(progress, cancel):  # torch is imported here, off the UI thread
            from napari_ssmamba.inference import warm_up
            from napari_ssmamba.inference.predict import resolve_device

            try:
                model, card = self._load_model(checkpoint)
                seconds = warm_up(slide, model, card, device, cache=self._cache)
                return "GPU" if resolve_device(device).type == "cuda" else "CPU", seconds
            finally:
                done.set()

        self.status_label.setText("Preparing the model and the slide…")
        start_job(
            job,
            "Preparing the model and the slide",
            on_returned=self._on_warmed_up,
            on_errored=self._on_warm_up_failed,
            on_finished=self._on_warm_up_finished,
        )

    def _on_warmed_up(self, prepared: tuple) -> None:
        if self._worker is None:  # else the label tells the run's progress
            where, seconds = prepared
            self.status_label.setText(
                f"Ready to run on the {where} (prepared in {sum(seconds.values()):.1f} s)."
            )

    def _on_warm_up_failed(self, error: Exception) -> None:
        if self._worker is None:  # else the run reports it
            self.status_label.setText(f"Could not prepare the run: {error}")

    def _on_warm_up_finished(self) -> None:
        self._warming = None
        self._warm_up()  # the choices may have changed meanwhile

    def _load_model(self, checkpoint):
        from napari_ssmamba.model import default_checkpoint, load_checkpoint

        path = str(checkpoint or default_checkpoint())
        if path not in self._models:
            self._models[path] = load_checkpoint(path, device="cpu")
        return self._models[path]

    @staticmethod
    def _rois_of(layer, slide_layer) -> list:
        """Annotations with an area from a shapes layer, in the slide's level-0 pixels; drawn
        shapes get an id in ``features``."""
        from napari_ssmamba.annotations import new_id
        from napari_ssmamba.gui.layers import annotations_in_slide_frame

        features = layer.features.copy()
        if "id" not in features:
            features["id"] = ""
        ids = features["id"].fillna("").astype(str).tolist()
        if "".join(ids) == "" or "" in ids:
            features["id"] = [i or new_id() for i in ids]
            _set_features(layer, features)
        return [a for a in annotations_in_slide_frame(layer, slide_layer) if a.geometry.area > 0]

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_finished(self) -> None:
        self._worker, self._cancel = None, None
        self._set_running(False)
        self._warm_up()  # the choices may have changed during the run

    def _on_errored(self, error: Exception) -> None:
        from napari.utils.notifications import show_error, show_info

        from napari_ssmamba.errors import CancelledError

        if isinstance(error, CancelledError):
            self.status_label.setText("Cancelled.")
            show_info("Classification cancelled.")
            return
        self.status_label.setText(f"Failed: {error}")
        show_error(f"Classification failed: {error}")

    def _on_returned(self, result) -> None:
        from napari.utils.notifications import show_info, show_warning

        self.result = result
        self._show_result(result)
        n_rois = "whole tissue" if result.whole_tissue else f"{len(result.rois)} ROI(s)"
        self.status_label.setText(
            f"{n_rois}: {result.n_tiles} tiles classified, {result.n_background_tiles} background "
            f"tiles skipped, {result.timings.get('total_s', 0):.1f} s."
        )
        self.warning_label.setVisible(result.untrained)
        if result.n_tiles == 0:
            self.status_label.setText(
                f"Nothing to classify: no tissue tile in the {n_rois} "
                f"({result.n_background_tiles} background tiles skipped)."
            )
            show_warning(self.status_label.text())
        elif result.untrained:
            show_warning(UNTRAINED_TEXT)
        else:
            show_info(self.status_label.text())

    # --- showing results ---------------------------------------------------------------------

    def _show_result(self, result) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        if self._run_roi_layer is not None and self._run_roi_layer in self.viewer.layers:
            self._label_rois(self._run_roi_layer, result)
        self._show_legend(_legend_html(result))
        slide_layer = self._run_slide_layer
        if result.n_tiles == 0:  # no maps: this slide's from an earlier run would show a result
            for name in [n for n in self.result_layers if n.startswith(f"{slide_layer.name} [")]:
                layer = self.result_layers.pop(name)
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
            return
        base_scale = tuple(slide_layer.scale[-2:])
        base_translate = np.asarray(slide_layer.translate[-2:], dtype=float)
        stem = slide_layer.name
        units = {"units": tuple(slide_layer.units[-2:])}

        scale, translate = result.heatmap_grid.layer_transform(base_scale)
        translate = tuple(np.asarray(translate) + base_translate)
        for index, name in enumerate(result.class_names):
            self._put_layer(
                f"{stem} [{name} probability]",
                result.heatmaps[index],
                "image",
                scale=scale,
                translate=translate,
                colormap=fading_colormap(HEATMAP_COLORMAP),
                blending="translucent",
                contrast_limits=(0.0, 1.0),
                visible=False,
                opacity=0.7,
                **units,
            )
        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        for index, rgb in enumerate(result.class_colors):
            colors[index + 1] = tuple(v / 255 for v in rgb) + (1.0,)
        labels = self._put_layer(
            f"{stem} [{LABELS_LAYER}]",
            result.labels,
            "labels",
            scale=scale,
            translate=translate,
            colormap=DirectLabelColormap(color_dict=colors),
            opacity=0.45,
            blending="translucent",
            **units,
        )
        # the Export widget finds results here
        labels.metadata[RESULT_KEY] = result
        labels.metadata[RESULT_SLIDE_KEY] = slide_layer.metadata["slide"]
        if result.attention is not None:
            a_scale, a_translate = result.attention_grid.layer_transform(base_scale)
            self._put_layer(
                f"{stem} [{ATTENTION_LAYER}]",
                result.attention,
                "image",
                scale=a_scale,
                translate=tuple(np.asarray(a_translate) + base_translate),
                colormap=fading_colormap(ATTENTION_COLORMAP),
                blending="translucent",
                contrast_limits=(0.0, 1.0),
                visible=self.attention_check.isChecked(),
                opacity=self.attention_slider.value() / 100,
                **units,
            )

    def _put_layer(self, name, data, kind, **kwargs):
        """Update our result layer ``name`` in place, or add it."""
        from napari.layers import Image, Labels

        layer = self.result_layers.get(name)
        layer_type = Image if kind == "image" else Labels
        if layer is not None and layer in self.viewer.layers and isinstance(layer, layer_type):
            visible = layer.visible
            layer.data = data
            for key in ("scale", "translate", "colormap", "contrast_limits"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            layer.visible = visible
        else:
            add = self.viewer.add_image if kind == "image" else self.viewer.add_labels
            layer = add(data, name=name, **kwargs)
            self.result_layers[name] = layer
        return layer

    def _show_legend(self, html: str) -> None:
        """The legend at its own height, up to 12 lines; a longer one scrolls."""
        self.legend_label.setText(html)
        most = 12 * self.legend_label.fontMetrics().lineSpacing()
        needed = max(
            self.legend_label.heightForWidth(self.legend_area.viewport().width()),
            self.legend_label.sizeHint().height(),
        )
        self.legend_area.setFixedHeight(min(needed + 2 * self.legend_area.frameWidth() + 2, most))

    def _label_rois(self, layer, result) -> None:
        """Predicted class, confidence, edge colour and text on each ROI row.

        An ROI drawn as several rows (its holes, the parts of a multipolygon) is labelled once,
        on its first part. The text is black over the slide and, where an ROI's label falls off
        it, in the colour that reads on napari's canvas. A white fill napari gave new shapes is
        cleared.
        """
        by_id = {}
        for index, roi in enumerate(result.rois):
            if roi.annotation is not None:
                by_id[roi.annotation.id] = index, roi
        features = layer.features.copy()
        ids = features["id"].astype(str).tolist() if "id" in features else [""] * len(layer.data)
        off_slide_text = _text_color_on(self.viewer.theme)
        width, height = result.slide_dimensions_wh
        classes, confidences, labels, edges, text_colors = [], [], [], [], []
        labelled = set()
        for row_id in ids:
            index, roi = by_id.get(row_id, (None, None))
            labels.append(
                ""
                if roi is None or index in labelled
                else f"{result.roi_label(index)}: {result.roi_verdict(index)}"
            )
            labelled.add(index)
            text_colors.append(
                "black"
                if roi is None or _label_on_slide(roi.geometry, width, height)
                else off_slide_text
            )
            if roi is None or roi.class_index is None:
                classes.append("")
                confidences.append(np.nan)
                edges.append((0.6, 0.6, 0.6, 1.0))
            else:
                classes.append(roi.class_name)
                confidences.append(roi.confidence)
                edges.append(tuple(v / 255 for v in result.class_colors[roi.class_index]) + (1.0,))
        features["predicted_class"] = classes
        features["confidence"] = confidences
        features["prediction"] = labels
        _set_features(layer, features)
        layer.edge_color = edges
        layer.edge_width = [max(float(w), 12.0) for w in np.ravel(layer.edge_width)]
        faces = np.asarray(layer.face_color, dtype=float).reshape(-1, 4)
        napari_white = np.all(faces == 1.0, axis=1)
        if napari_white.any():
            faces[napari_white, 3] = 0.0
            layer.face_color = faces
        layer.text = {
            "string": "{prediction}",
            "color": {"array": text_colors, "default": "black"},
            "size": 11,
            "anchor": "upper_left",
        }

    # --- attention view ----------------------------------------------------------------------

    def _attention_layer(self):
        for name, layer in self.result_layers.items():
            if name.endswith(f"[{ATTENTION_LAYER}]") and layer in self.viewer.layers:
                return layer
        return None

    def _on_attention_toggled(self, checked: bool) -> None:
        layer = self._attention_layer()
        if layer is not None:
            layer.visible = checked

    def _on_attention_opacity(self, value: int) -> None:
        layer = self._attention_layer()
        if layer is not None:
            layer.opacity = value / 100


def _label_on_slide(geometry, width: int, height: int) -> bool:
    """Whether napari's upper-left label of a shape (drawn above its bounding box) is over the
    slide rather than the canvas around it."""
    left, top = geometry.bounds[:2]
    return 0 < top <= height and 0 <= left < width


def _text_color_on(theme: str) -> str:
    """Black or white, whichever reads on the canvas of napari theme ``theme``."""
    from napari.utils.theme import get_theme

    red, green, blue = get_theme(theme).canvas.as_rgb_tuple()[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 128 else "white"


def _set_features(layer, features) -> None:
    """Set a shapes layer's ``features`` and keep what a newly drawn shape gets: napari resets the
    defaults to the last row, which would give a new shape that row's id and predicted class."""
    kept = layer.feature_defaults.iloc[0].to_dict()
    layer.features = features
    defaults = layer.feature_defaults.iloc[0].to_dict()
    defaults |= {key: value for key, value in kept.items() if key in defaults}
    defaults |= {key: value for key, value in _ROW_DEFAULTS.items() if key in defaults}
    layer.feature_defaults = defaults


def _choice_key(slide, checkpoint, device: str) -> tuple[str, str, str]:
    """What a warm-up or a run prepared: once per slide, model and device."""
    return str(slide.path), str(checkpoint), device


def _set_items(combo: QComboBox, items: list[str]) -> None:
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if current in items:
        combo.setCurrentText(current)
    combo.blockSignals(False)


def _legend_html(result) -> str:
    rows = [
        f'<span style="background-color: rgb{tuple(c)};">&nbsp;&nbsp;&nbsp;&nbsp;</span>&nbsp;{name}'
        for name, c in zip(result.class_names, result.class_colors)
    ]
    rois = []
    for index, roi in enumerate(result.rois):
        label = result.roi_label(index)
        tiles = f"{roi.n_tiles} tile{'' if roi.n_tiles == 1 else 's'}"
        rois.append(f"{label}: <b>{result.roi_verdict(index)}</b>, {tiles}")
    return "<b>Classes</b><br>" + "<br>".join(rows) + "<br><br>" + "<br>".join(rois)
