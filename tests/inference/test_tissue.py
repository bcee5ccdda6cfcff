import numpy as np
import pytest
from PIL import Image

from napari_ssmamba.inference.tissue import TissueMask, detect_tissue, tissue_mask_from_rgb


def test_tissue_on_he_sample(sample_slide):
    tissue = detect_tissue(sample_slide)
    fraction = tissue.mask.mean()
    assert 0.2 < fraction < 0.6  # CMU-1 small region: a strip of tissue on glass
    # The left margin of the sample is glass, the centre column is tissue.
    h, w = tissue.mask.shape
    assert tissue.mask[:, : w // 10].mean() < 0.05
    assert tissue.mask[h // 3 : 2 * h // 3, 2 * w // 5 : 3 * w // 5].mean() > 0.8


def test_tissue_on_ihc_slides(data_dir):
    from napari_ssmamba.slide import open_slide

    with open_slide(data_dir / "slides" / "OS-2-vsi.ome.tif") as slide:  # Ki67 IHC, all tissue
        assert detect_tissue(slide).mask.mean() > 0.9
    with open_slide(data_dir / "slides" / "kidney-48-5.tif") as slide:  # IHC kidney, small piece
        mask = detect_tissue(slide).mask
        assert 0.001 < mask.mean() < 0.05
        ys, xs = np.nonzero(mask)
        # the piece lies left of centre, below the middle (see the slide)
        assert xs.mean() / mask.shape[1] < 0.4 and ys.mean() / mask.shape[0] > 0.4


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("no-tissue.png", 0.0, 0.05),
        ("almost-white-1.png", 0.0, 0.05),
        ("tissue-level0-4302-10273-4814-10785.png", 0.5, 1.0),
    ],
)
def test_tissue_on_histolab_tiles(data_dir, name, low, high):
    rgb = np.asarray(Image.open(data_dir / "patches" / "histolab-tiles" / name).convert("RGB"))
    assert low <= tissue_mask_from_rgb(rgb).mean() <= high


def test_fraction_in_boxes_matches_counting():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 30)) > 0.5
    tissue = TissueMask(mask, (10.0, 10.0))
    boxes = np.array([[0, 0, 100, 100], [55, 25, 60, 40], [250, 150, 100, 100]])
    expected = [mask[0:10, 0:10].mean(), mask[2:7, 5:12].mean(), mask[15:20, 25:30].sum() / 100]
    assert tissue.fraction_in_boxes(boxes) == pytest.approx(expected, abs=1e-6)


def test_scanner_grey_glass_is_not_tissue():
    """Glass as scanners image it (grey, noisy, no stain) has no tissue; a stained patch on it does."""
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(240, 3, size=(256, 256, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask_from_rgb(glass).mean() == 0.0

    stained = glass.copy()
    stained[64:192, 64:192] = (180, 90, 160)  # eosin-pink tissue
    mask = tissue_mask_from_rgb(stained)
    assert mask[64:192, 64:192].mean() > 0.95
    assert mask[:48].mean() == 0.0
