"""Every file in shared/data/slides opens as PROVENANCE.md describes, or fails with SlideError."""

import numpy as np
import pytest

from napari_ssmamba.slide import (
    MIN_OVERVIEW_SIDE,
    PROPERTY_MPP_X,
    PROPERTY_MPP_Y,
    SlideError,
    open_slide,
)

# file -> (backend, vendor, stored level dimensions (w, h), mpp (y, x) or None, rgb, associated)
EXPECTED = {
    "CMU-1-Small-Region.svs": (
        "OpenSlideSlide", "aperio", [(2220, 2967)], (0.499, 0.499), True,
        {"label", "macro", "thumbnail"}),
    "OS-1-detail.ome.tif": (
        "TiffSlide", "ome-tiff", [(1101, 1101)], (0.22710240047237298, 0.2270972430394695), True,
        set()),
    "OS-2-vsi.ome.tif": (
        "TiffSlide", "ome-tiff", [(1445, 1445)], (0.3460559834973875, 0.34605325860336383),
        True, set()),
    "kidney-48-5.tif": ("TiffSlide", "tiff", [(1493, 901)], None, True, set()),
    "small_vectra.qptiff": (
        "TiffSlide", "qptiff", [(1920, 1440)], (0.49653463077185084, 0.49653463077185084), False,
        {"thumbnail", "macro", "label"}),
    # 72 dpi in the resolution tags is a placeholder, not a pixel size
    "openslide-python-fixtures/boxes.tiff": (
        "OpenSlideSlide", "generic-tiff", [(300, 250), (150, 125), (75, 62), (37, 31)], None,
        True, set()),
    "openslide-python-fixtures/small.svs": (
        "OpenSlideSlide", "aperio", [(16, 16)], (0.499, 0.499), True, {"thumbnail"}),
    "openslide-python-fixtures/dicom/boxes_0.dcm": (
        "OpenSlideSlide", "dicom", [(16, 16)], (0.499, 0.499), True, {"thumbnail"}),
    "openslide-python-fixtures/dicom/boxes_1.dcm": (
        "OpenSlideSlide", "dicom", [(16, 16)], (0.499, 0.499), True, {"thumbnail"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_opens_as_described(slides_dir, name):
    backend, vendor, stored, mpp, rgb, associated = EXPECTED[name]
    with open_slide(slides_dir / name) as slide:
        assert type(slide).__name__ == backend
        assert slide.vendor == vendor
        assert slide.level_dimensions[: len(stored)] == stored
        assert slide.native_level_count == len(stored)
        assert slide.dimensions == stored[0]
        if mpp is None:
            assert slide.mpp is None
            assert PROPERTY_MPP_X not in slide.properties
        else:
            assert slide.mpp == pytest.approx(mpp, rel=1e-9)
            assert float(slide.properties[PROPERTY_MPP_Y]) == pytest.approx(mpp[0])
        assert slide.is_rgb is rgb
        assert set(slide.associated) == associated
        for image in slide.associated.values():
            assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_levels_form_a_pyramid_ending_small(slides_dir, name):
    with open_slide(slides_dir / name) as slide:
        assert len(slide.levels) == slide.level_count
        assert min(slide.levels[-1].shape[:2]) <= MIN_OVERVIEW_SIDE
        for level, (w, h) in zip(slide.levels, slide.level_dimensions):
            assert level.shape == (h, w, slide.channel_count)
            assert level.dtype == slide.dtype
        widths = [w for w, _ in slide.level_dimensions]
        assert widths == sorted(widths, reverse=True)
        assert slide.level_downsamples[0] == 1.0


def test_single_level_svs_gets_reduced_levels(slides_dir):
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as slide:
        assert slide.level_dimensions == [(2220, 2967), (1110, 1483), (555, 741)]
        assert slide.level_downsamples == [1.0, 2.0, 4.0]
        level0 = slide.read_region(0, 0, 0, 400, 400).astype(np.float64)
        expected = level0.reshape(200, 2, 200, 2, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(slide.read_region(1, 0, 0, 200, 200), expected, atol=0.51)
        # level-1 chunks follow the file's 240 px tile grid
        assert slide.levels[0].chunksize[:2] == (480, 480)
        assert slide.tile_size == (240, 240)


def test_qptiff_channels(slides_dir):
    with open_slide(slides_dir / "small_vectra.qptiff") as slide:
        assert slide.channel_names == ["DAPI", "FITC", "Cy3"]
        assert slide.channel_colors == [(0, 0, 255), (0, 255, 0), (255, 255, 0)]
        assert slide.levels[0].shape == (1440, 1920, 3)
        # channels are separate pages: one channel per chunk
        assert slide.levels[0].chunksize[2] == 1
        import tifffile

        expected = tifffile.imread(slides_dir / "small_vectra.qptiff", series=0)  # (c, y, x)
        np.testing.assert_array_equal(slide.levels[0][100:300, 200:500].compute(),
                                      expected[:, 100:300, 200:500].transpose(1, 2, 0))


@pytest.mark.parametrize("name", ["corrupt/unopenable.tiff", "missing.svs"])
def test_unopenable_files_raise_slide_error_naming_the_file(slides_dir, name):
    with pytest.raises(SlideError, match=name.split("/")[-1]):
        open_slide(slides_dir / name)


def test_an_unknown_compression_is_not_blamed_on_a_missing_imagecodecs(slides_dir):
    import imagecodecs

    with pytest.raises(SlideError, match=f"imagecodecs {imagecodecs.__version__} cannot decode"):
        open_slide(slides_dir / "corrupt" / "unopenable.tiff")


@pytest.mark.parametrize(
    "name, size, refers_to",
    [
        ("CMU-1-Small-Region.svs", 1_000_000, "1,275,950"),  # its first directory is past the end
        ("kidney-48-5.tif", 2_000_000, "4,035,719"),  # its image data runs past the end
    ],
)
def test_a_truncated_file_is_called_so(slides_dir, tmp_path, name, size, refers_to):
    cut = tmp_path / name
    cut.write_bytes((slides_dir / name).read_bytes()[:size])
    with pytest.raises(SlideError, match=f"{name}: the file ends early: .* byte {refers_to}"):
        open_slide(cut)


def test_not_a_slide_raises_slide_error(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not an image")
    with pytest.raises(SlideError, match="notes.tif"):
        open_slide(path)


@pytest.mark.parametrize("pixel_reader", ["auto", "openslide"])
def test_corrupt_tiles_raise_on_read_every_time(slides_dir, pixel_reader):
    from napari_ssmamba.slide.openslide_slide import OpenSlideSlide

    path = slides_dir / "corrupt" / "unreadable.svs"
    with OpenSlideSlide(path, pixel_reader=pixel_reader) as slide:
        assert slide.dimensions == (16, 16)
        for _ in range(2):  # the failed handle is replaced, and the new one fails the same way
            with pytest.raises(SlideError, match="unreadable.svs.*Bogus marker length"):
                slide.read_region(0, 0, 0, 16, 16)
        with pytest.raises(SlideError, match="unreadable.svs"):
            slide.levels[0].compute()


def test_dicom_folder_opens(slides_dir):
    with open_slide(slides_dir / "openslide-python-fixtures" / "dicom") as slide:
        assert slide.vendor == "dicom"
        assert slide.dimensions == (16, 16)


def test_mpp_argument_overrides_and_supplies(slides_dir):
    with open_slide(slides_dir / "kidney-48-5.tif", mpp=0.5) as slide:
        assert slide.mpp == (0.5, 0.5)
        assert slide.properties[PROPERTY_MPP_X] == "0.5"
    with open_slide(slides_dir / "CMU-1-Small-Region.svs", mpp=(0.25, 0.26)) as slide:
        assert slide.mpp == (0.25, 0.26)
    for wrong in (-1, 0, 1000, float("nan")):  # the range a file's MPP is trusted in, too
        with pytest.raises(ValueError, match="mpp must be 0.01-50 µm per pixel"):
            open_slide(slides_dir / "kidney-48-5.tif", mpp=wrong)


def test_closed_slide_refuses_reads(slides_dir):
    slide = open_slide(slides_dir / "OS-1-detail.ome.tif")
    slide.close()
    with pytest.raises(SlideError, match="closed"):
        slide.read_region(0, 0, 0, 8, 8)


@pytest.mark.parametrize("name", ["OS-1-detail.ome.tif", "CMU-1-Small-Region.svs"])
def test_levels_of_a_closed_slide_refuse_to_read(slides_dir, name):
    slide = open_slide(slides_dir / name)
    reader = slide.level_readers[0]
    slide.close()
    with pytest.raises(SlideError, match=f"{name}.*closed"):
        reader[:10, :10]


def test_tiled_fluorescence_tiff_keeps_its_channels(tmp_path):
    """OpenSlide calls this generic-tiff and would flatten it to RGB; tifffile reads it."""
    import tifffile

    data = np.random.default_rng(0).integers(0, 4000, (2, 1200, 1500)).astype(np.uint16)
    path = tmp_path / "fluorescence.tif"
    tifffile.imwrite(path, data, tile=(256, 256), photometric="minisblack",
                     planarconfig="separate", resolution=(40_000, 40_000),
                     resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert type(slide).__name__ == "TiffSlide" and not slide.is_rgb
        assert slide.mpp == pytest.approx((0.25, 0.25))
        assert slide.channel_names == ["Channel 0", "Channel 1"]
        assert slide.levels[0].chunksize == (512, 512, 1)
        np.testing.assert_array_equal(slide.levels[0][100:300, 1400:].compute(),
                                      data[:, 100:300, 1400:].transpose(1, 2, 0))
        assert (slide.read_region(1, 2300, 0, 20, 10) == 0).all()  # padded with 0, not white


def test_subifd_pyramid(tmp_path):
    import tifffile

    rgb = np.random.default_rng(1).integers(0, 255, (2048, 1536, 3)).astype(np.uint8)
    path = tmp_path / "subifds.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb, tile=(256, 256), photometric="rgb", subifds=2, compression="zlib")
        tw.write(rgb[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1,
                 compression="zlib")
        tw.write(rgb[::4, ::4], tile=(256, 256), photometric="rgb", subfiletype=1,
                 compression="zlib")
    with open_slide(path) as slide:
        assert type(slide).__name__ == "TiffSlide" and slide.is_rgb
        assert slide.native_level_count == 3
        assert slide.level_dimensions == [(1536, 2048), (768, 1024), (384, 512)]
        assert slide.mpp is None
        np.testing.assert_array_equal(slide.read_region(2, 400, 400, 50, 60),
                                      rgb[::4, ::4][100:150, 100:160])
