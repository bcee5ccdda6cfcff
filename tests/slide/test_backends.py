"""Pixels agree between OpenSlide, the direct tile reader and tifffile; reads are thread-safe."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from napari_ssmamba.slide.openslide_slide import OpenSlideSlide
from napari_ssmamba.slide.tiff_slide import TiffSlide


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "openslide-python-fixtures/boxes.tiff"])
def test_backends_agree_on_every_level(slides_dir, name):
    path = slides_dir / name
    with OpenSlideSlide(path, pixel_reader="openslide") as by_openslide, \
            OpenSlideSlide(path) as direct, TiffSlide(path) as by_tifffile:
        assert by_openslide.pixel_reader == "openslide"
        assert direct.pixel_reader == "tifffile"
        assert by_openslide.level_dimensions == direct.level_dimensions
        assert by_openslide.level_dimensions == by_tifffile.level_dimensions
        for level in range(by_openslide.level_count):
            expected = by_openslide.levels[level].compute()
            np.testing.assert_array_equal(direct.levels[level].compute(), expected)
            np.testing.assert_array_equal(by_tifffile.levels[level].compute(), expected)


@pytest.mark.parametrize("pixel_reader", ["auto", "openslide"])
def test_read_region_pads_outside_with_white(slides_dir, pixel_reader):
    with OpenSlideSlide(slides_dir / "CMU-1-Small-Region.svs", pixel_reader=pixel_reader) as s:
        region = s.read_region(0, -20, 2200, 60, 50)  # top-right corner, partly outside
        assert region.shape == (60, 50, 3)
        assert (region[:20] == 255).all() and (region[:, 20:] == 255).all()
        np.testing.assert_array_equal(region[20:, :20], s.levels[0][:40, 2200:2220].compute())
        assert (s.read_region(2, 10_000, 10_000, 8, 8) == 255).all()


def test_fluorescence_pads_with_zero(slides_dir):
    with TiffSlide(slides_dir / "small_vectra.qptiff") as slide:
        region = slide.read_region(1, -100, -100, 100, 100)
        assert region.shape == (100, 100, 3)
        assert (region[:50, :50] == 0).all()
        np.testing.assert_array_equal(region[50:, 50:], slide.levels[1][:50, :50].compute())


@pytest.mark.parametrize("pixel_reader", ["auto", "openslide"])
def test_concurrent_reads_match_sequential_reads(slides_dir, pixel_reader):
    rng = np.random.default_rng(0)
    corners = [(int(y), int(x)) for y, x in zip(rng.integers(-50, 2900, 24),
                                                 rng.integers(-50, 2150, 24))]
    with OpenSlideSlide(slides_dir / "CMU-1-Small-Region.svs", pixel_reader=pixel_reader,
                        cache_bytes=2**20) as slide:
        expected = [slide.read_region(0, y, x, 100, 120) for y, x in corners]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(2):
                got = list(pool.map(lambda c: slide.read_region(0, c[0], c[1], 100, 120),
                                    corners))
                for a, b in zip(got, expected):
                    np.testing.assert_array_equal(a, b)
        assert slide._cache.nbytes <= 2**20


def test_thumbnail_and_best_level(slides_dir):
    with TiffSlide(slides_dir / "CMU-1-Small-Region.svs") as slide:
        assert slide.vendor == "aperio"
        assert slide.mpp == (0.499, 0.499)
        assert slide.best_level_for_downsample(1) == 0
        assert slide.best_level_for_downsample(3.9) == 1
        assert slide.best_level_for_downsample(100) == 2
        thumb = slide.get_thumbnail(300)
        assert max(thumb.shape[:2]) <= 300 and thumb.dtype == np.uint8
        assert 100 < thumb.mean() < 250
        assert set(slide.associated) == {"thumbnail", "label", "macro"}


def test_level_readers_index_like_arrays(slides_dir):
    with TiffSlide(slides_dir / "small_vectra.qptiff") as slide:
        reader, level = slide.level_readers[1], slide.levels[1].compute()
        for key in [(slice(5, 50), slice(7, 90)), (slice(None), slice(0, 100, 3), 1),
                    (12, slice(3, 9)), (-1, -2), (slice(100, 50),)]:
            np.testing.assert_array_equal(reader[key], level[key])
        np.testing.assert_array_equal(np.asarray(reader), level)
        with pytest.raises(IndexError):
            reader[720]
