"""Re-make the screenshots in docs/img: the sample slide, ROIs, class map, heatmap, LPR attention.

usage: xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [CHECKPOINT] [OUTDIR]
(no checkpoint: the bundled default model).
"""

import sys
import time

import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_ssmamba.gui.classify_widget import ClassifyWidget
from napari_ssmamba.gui.export_widget import ExportWidget

ckpt = sys.argv[1] if len(sys.argv) > 1 else ""
out = sys.argv[2] if len(sys.argv) > 2 else "docs/img"
viewer = napari.Viewer(show=True)
viewer.window._qt_window.resize(1500, 950)
viewer.open_sample("napari-ssmamba", "cmu1_small_region")
slide = viewer.layers[0]
mpp = np.asarray(slide.scale[-2:])
shapes = viewer.add_shapes(
    [np.array([[700, 800], [700, 1500], [1300, 1500], [1300, 800]], float),
     np.array([[1700, 700], [1600, 1100], [1900, 1400], [2300, 1250], [2250, 800]], float),
     np.array([[2650, 1400], [250, 300]], float),
     np.array([[1450, 60], [1450, 420], [1800, 420], [1800, 60]], float)],
    shape_type=["rectangle", "polygon", "ellipse", "rectangle"], name="ROIs", scale=mpp,
    face_color="transparent", edge_width=12, units=("um", "um"))
widget = ClassifyWidget(viewer)
viewer.window.add_dock_widget(widget, name="Classify ROIs", area="right")
widget.roi_combo.setCurrentText("ROIs")
if ckpt:
    widget.model_combo.setCurrentText("Checkpoint file")
    widget.model_path.setText(ckpt)
widget.device_combo.setCurrentText("cpu")
app = QApplication.instance()

def wait():
    while widget._worker is not None:
        app.processEvents(); time.sleep(0.05)
    for _ in range(20):
        app.processEvents(); time.sleep(0.02)

w = widget.run(); wait()
viewer.reset_view()
for _ in range(10): app.processEvents(); time.sleep(0.02)
viewer.screenshot(f"{out}/classify_rois.png", canvas_only=False, flash=False)
# heatmap view: one class heatmap on, labels off
stem = slide.name
viewer.layers[f"{stem} [classes]"].visible = False
name0 = widget.result.class_names[0]
viewer.layers[f"{stem} [{name0} probability]"].visible = True
for _ in range(10): app.processEvents(); time.sleep(0.02)
viewer.screenshot(f"{out}/heatmap.png", canvas_only=False, flash=False)
viewer.layers[f"{stem} [{name0} probability]"].visible = False
widget.attention_check.setChecked(True)
widget.attention_slider.setValue(80)
viewer.camera.center = (0, 1250 * mpp[0], 1150 * mpp[1])
viewer.camera.zoom = viewer.camera.zoom * 2.2
for _ in range(10): app.processEvents(); time.sleep(0.02)
viewer.screenshot(f"{out}/attention.png", canvas_only=False, flash=False)
print("done", widget.result.rois and [(r.class_name, r.confidence) for r in widget.result.rois])
viewer.close()
