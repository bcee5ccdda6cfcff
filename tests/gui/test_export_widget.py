"""The Export widget writes a result found on the viewer; the heatmap writer makes an OpenSlide TIFF."""

from __future__ import annotations

import numpy as np
import pytest
import shapely


@pytest.fixture(scope="module")
def roi_result(small_model, sample_slide_path):
    from napari_ssmamba.inference import classify_slide
    from napari_ssmamba.slide import open_slide

    model, card = small_model
    slide = open_slide(sample_slide_path)
    return slide, classify_slide(
        slide, model, card, rois=[shapely.box(700, 700, 1500, 1500)], device="cpu", attention=False
    )


def test_export_widget_writes_chosen_outputs(make_napari_viewer, qtbot, tmp_path, roi_result):
    from napari_ssmamba.export import output_paths, outputs_complete
    from napari_ssmamba.gui.export_widget import ExportWidget

    slide, result = roi_result
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.result_combo.count() == 0
    viewer.add_labels(
        result.labels,
        name="classes",
        metadata={"classification_result": result, "classification_slide": slide},
    )
    assert widget.result_combo.currentText() == "classes"
    widget.folder_edit.setText(str(tmp_path))
    widget.kind_checks["figure"].setChecked(False)
    worker = widget.export()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: widget.export_button.isEnabled(), timeout=5_000)
    paths = output_paths(tmp_path, "CMU-1-Small-Region")
    assert set(widget.written) == {"geojson", "heatmap", "tiles", "run"}
    assert not paths["figure"].exists()
    assert outputs_complete(tmp_path, "CMU-1-Small-Region")


def test_heatmap_writer_opens_in_openslide_aligned(make_napari_viewer, tmp_path, roi_result):
    import openslide

    from napari_ssmamba.gui.export_io import write_heatmap

    _, result = roi_result
    mpp = result.mpp_yx
    scale, translate = result.heatmap_grid.layer_transform(mpp)
    viewer = make_napari_viewer()
    layer = viewer.add_image(
        result.heatmaps[0],
        scale=scale,
        translate=translate,
        colormap="magma",
        contrast_limits=(0, 1),
        units=("µm", "µm"),
    )
    data, meta, _ = layer.as_layer_data_tuple()
    [written] = write_heatmap(str(tmp_path / "tumor.tif"), data, meta)
    with openslide.OpenSlide(written) as tiff:
        # each cell a block of pixels of at most 8 µm, an MPP slide readers keep
        pixel = float(tiff.properties["openslide.mpp-x"])
        repeat = round(scale[1] / pixel)
        assert repeat > 1 and pixel <= 8 and repeat * pixel == pytest.approx(scale[1], rel=1e-3)
        # the grid's first cell sits at origin / cell cells from the TIFF's origin
        cell = result.heatmap_grid.cell_l0
        oy, ox = result.heatmap_grid.origin_l0_yx
        row, col = round(oy / cell) * repeat, round(ox / cell) * repeat
        h, w = (n * repeat for n in result.heatmaps.shape[1:])
        assert tiff.dimensions == (col + w, row + h)
        region = np.asarray(tiff.read_region((0, 0), 0, tiff.dimensions))[..., :3]
        assert (region[:row] == 255).all() and (region[:, :col] == 255).all()
        i, j = np.argwhere(result.labels > 0)[0]
        block = region[row + i * repeat : row + (i + 1) * repeat, col + j * repeat :][:, :repeat]
        assert (block != 255).any(axis=-1).all()
    # and our reader lays it over the slide in µm
    [reopened] = viewer.open(written, plugin="napari-ssmamba")
    np.testing.assert_allclose(reopened.scale[-2:], [pixel, pixel], rtol=1e-3)


def test_cells_the_colormap_leaves_transparent_are_written_white():
    from napari_ssmamba.gui.classify_widget import fading_colormap
    from napari_ssmamba.gui.export_io import layer_rgb

    colormap = fading_colormap("magma")
    rgb = layer_rgb(np.array([[0.0, 1.0]]), {"colormap": colormap, "contrast_limits": (0, 1)})
    assert rgb[0, 0].tolist() == [255, 255, 255]  # napari shows the slide there, not black
    assert rgb[0, 1].tolist() == (colormap.map([1.0])[0, :3] * 255).round().tolist()
