import numpy as np
import pytest
import torch

from napari_ssmamba.training.augment import HEAugment, gaussian_blur, hed_to_rgb, rgb_to_hed
from napari_ssmamba.training.data import read_image


@pytest.fixture
def tile(data_dir):
    image = read_image(data_dir / "patches" / "nct-crc-he-100k" / "TUM-AACHEHDV.tif")[:64, :64]
    return torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255


def test_hed_matches_skimage(tile):
    color = pytest.importorskip("skimage.color")
    hwc = tile.permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(rgb_to_hed(tile.double()).permute(1, 2, 0).numpy(), color.rgb2hed(hwc), atol=1e-6)
    hed = color.rgb2hed(hwc)
    np.testing.assert_allclose(
        hed_to_rgb(torch.from_numpy(hed).permute(2, 0, 1)).permute(1, 2, 0).numpy(), color.hed2rgb(hed), atol=1e-6
    )


def test_augment_is_seeded_and_changes_the_tile(tile):
    augment = HEAugment(blur_prob=0.5)
    a = augment(tile, torch.Generator().manual_seed(3))
    b = augment(tile, torch.Generator().manual_seed(3))
    c = augment(tile, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == tile.shape and a.min() >= 0 and a.max() <= 1


def test_geometric_only_augment_permutes_pixels(tile):
    augment = HEAugment(hed_scale=0, hed_shift=0, brightness=0, contrast=0, saturation=0, blur_prob=0)
    out = augment(tile, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.sum(), tile.sum())
    torch.testing.assert_close(out.flatten().sort().values, tile.flatten().sort().values)


def test_blur_keeps_constant_image_and_smooths_noise():
    flat = torch.full((3, 16, 16), 0.4)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)
    noise = torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert gaussian_blur(noise, 1.0).std() < noise.std() / 2
