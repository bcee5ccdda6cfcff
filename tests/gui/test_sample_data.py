import numpy as np
import pytest
from PIL import Image

from napari_ssmamba.slide import open_slide


@pytest.fixture
def sample_viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-ssmamba", "cmu1_small_region")
    return viewer


def test_open_sample(sample_viewer):
    [layer] = sample_viewer.layers
    assert layer.name == "CMU-1-Small-Region"
    assert layer.rgb and layer.multiscale
    assert [tuple(d.shape) for d in layer.data] == [(2967, 2220, 3), (1483, 1110, 3),
                                                     (741, 555, 3)]
    assert tuple(layer.scale) == (0.499, 0.499)
    assert layer.metadata["vendor"] == "aperio"


def test_screenshot_shows_the_slide(sample_viewer, qtbot, tmp_path):
    viewer = sample_viewer
    viewer.window._qt_window.resize(900, 900)
    qtbot.wait(50)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    Image.fromarray(shot).save(tmp_path / "sample.png")

    # the slide fills the canvas height: crop the canvas to the slide's box
    slide = viewer.layers[0].metadata["slide"]
    ys, xs = np.nonzero((shot != shot[0, 0]).any(axis=2))
    assert ys.size > 0.2 * shot.shape[0] * shot.shape[1], "the canvas is blank"
    box = shot[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    width, height = slide.dimensions
    assert box.shape[1] / box.shape[0] == pytest.approx(width / height, rel=0.05)

    # downsample screenshot and thumbnail to the same grid and compare them
    grid = (24, 32)  # (w, h)
    seen = np.asarray(Image.fromarray(box).resize(grid, Image.BOX), np.float64)
    thumb = slide.get_thumbnail(512)
    expected = np.asarray(Image.fromarray(thumb).resize(grid, Image.BOX), np.float64)
    assert seen.std() > 10, "the canvas is uniform"
    correlation = np.corrcoef(seen.ravel(), expected.ravel())[0, 1]
    assert correlation > 0.9
    assert np.abs(seen - expected).mean() < 20


def test_sample_is_the_bundled_cc0_slide():
    from napari_ssmamba.gui.sample_data import sample_slide_path

    path = sample_slide_path()
    assert (path.parent / "ATTRIBUTION.md").is_file()
    with open_slide(path) as slide:
        assert slide.dimensions == (2220, 2967)
