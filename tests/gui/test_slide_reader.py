import numpy as np
import pytest

from napari_ssmamba.gui.slide_reader import get_slide_reader

# file -> (layer names, scale, units, multiscale levels, rgb)
SLIDES = {
    "CMU-1-Small-Region.svs": (["CMU-1-Small-Region.svs"], (0.499, 0.499), "micrometer", 3, True),
    "OS-1-detail.ome.tif": (["OS-1-detail.ome.tif"], (0.22710240047237298, 0.2270972430394695),
                            "micrometer", 2, True),
    "kidney-48-5.tif": (["kidney-48-5.tif"], (1.0, 1.0), "pixel", 1, True),
    "small_vectra.qptiff": (
        ["small_vectra.qptiff [DAPI]", "small_vectra.qptiff [FITC]", "small_vectra.qptiff [Cy3]"],
        (0.49653463077185084, 0.49653463077185084), "micrometer", 2, False),
    "openslide-python-fixtures/boxes.tiff": (["boxes.tiff"], (1.0, 1.0), "pixel", 4, True),
    "openslide-python-fixtures/dicom/boxes_0.dcm": (["boxes_0.dcm"], (0.499, 0.499),
                                                    "micrometer", 1, True),
}


@pytest.mark.parametrize("name", sorted(SLIDES))
def test_open_with_plugin(make_napari_viewer, slides_dir, name, recwarn):
    names, scale, units, n_levels, rgb = SLIDES[name]
    viewer = make_napari_viewer()
    layers = viewer.open(slides_dir / name, plugin="napari-ssmamba")
    assert [layer.name for layer in layers] == names
    for layer in layers:
        assert layer.multiscale
        assert len(layer.data) == n_levels
        assert layer.rgb is rgb
        assert tuple(layer.scale) == pytest.approx(scale)
        assert [str(u) for u in layer.units] == [units, units]
        assert layer.metadata["slide_path"] == str(slides_dir / name)
        assert layer.metadata["slide"].dimensions[::-1] == layer.data[0].shape[:2]
    missing_mpp = [w for w in recwarn if "no pixel size" in str(w.message)]
    assert bool(missing_mpp) is (units == "pixel")


def test_multiplexed_channels_have_colours_and_limits(make_napari_viewer, slides_dir):
    viewer = make_napari_viewer()
    layers = viewer.open(slides_dir / "small_vectra.qptiff", plugin="napari-ssmamba")
    assert [layer.colormap.name for layer in layers] == ["blue", "green", "yellow"]
    for layer in layers:
        low, high = layer.contrast_limits
        assert 0 <= low < high <= 255
        assert layer.blending in ("translucent", "additive")
        assert layer.data[0].shape == (1440, 1920)


@pytest.mark.parametrize("name", ["corrupt/unopenable.tiff", "does-not-exist.svs"])
def test_reader_declines_files_it_cannot_open(slides_dir, name):
    assert get_slide_reader(str(slides_dir / name)) is None


def test_reader_says_why_a_vendor_slide_cannot_be_opened(tmp_path):
    from napari_ssmamba.errors import SlideError

    path = tmp_path / "truncated.svs"
    path.write_bytes(b"II*\x00" + bytes(64))
    reader = get_slide_reader(str(path))
    with pytest.raises(SlideError, match="truncated.svs"):
        reader(str(path))


def test_reader_declines_other_files(tmp_path):
    assert get_slide_reader(str(tmp_path / "annotations.geojson")) is None
    assert get_slide_reader([str(tmp_path / "a.svs"), str(tmp_path / "b.svs")]) is None


def test_reader_levels_are_lazy_and_right(slides_dir):
    reader = get_slide_reader(str(slides_dir / "CMU-1-Small-Region.svs"))
    [(levels, kwargs, layer_type)] = reader(str(slides_dir / "CMU-1-Small-Region.svs"))
    assert layer_type == "image"
    slide = kwargs["metadata"]["slide"]
    assert levels == slide.level_readers  # nothing read yet: tile readers, sliced on demand
    region = levels[0][1000:1100, 500:650]
    assert isinstance(region, np.ndarray) and region.shape == (100, 150, 3)
    np.testing.assert_array_equal(region, slide.read_region(0, 1000, 500, 100, 150))
    np.testing.assert_array_equal(region, slide.levels[0][1000:1100, 500:650].compute())


def test_channel_layers_slice_one_channel(slides_dir):
    path = str(slides_dir / "small_vectra.qptiff")
    layers = get_slide_reader(path)(path)
    assert [kwargs["name"] for _, kwargs, _ in layers] == [
        "small_vectra.qptiff [DAPI]", "small_vectra.qptiff [FITC]", "small_vectra.qptiff [Cy3]"]
    slide = layers[0][1]["metadata"]["slide"]
    for c, (levels, _, _) in enumerate(layers):
        assert levels[1].shape == (720, 960)
        np.testing.assert_array_equal(levels[1][10:20, 30:50],
                                      slide.levels[1][10:20, 30:50, c].compute())


def test_our_heatmap_tiff_lies_over_the_slide_and_is_no_slide(make_napari_viewer, tmp_path):
    from napari_ssmamba.export.tiff import HEATMAP_DESCRIPTION, write_pyramidal_tiff
    from napari_ssmamba.gui.slide_reader import is_slide_layer

    rgb = np.full((300, 400, 3), 255, np.uint8)
    rgb[100:200, 100:200] = (214, 39, 40)
    heatmap = write_pyramidal_tiff(
        tmp_path / "a.heatmap.tif", rgb, (8.0, 8.0), description=HEATMAP_DESCRIPTION
    )
    plain = write_pyramidal_tiff(tmp_path / "plain.tif", rgb, (8.0, 8.0))
    viewer = make_napari_viewer()
    [over, image] = [viewer.open(p, plugin="napari-ssmamba")[0] for p in (heatmap, plain)]
    # white multiplied with the slide leaves the tissue as it is; the class colour tints it
    assert (over.blending, over.opacity) == ("multiplicative", 0.7)
    assert not is_slide_layer(over) and is_slide_layer(image)
    assert image.blending != "multiplicative"


def test_the_manifest_claims_the_slide_suffixes():
    import importlib.resources

    import yaml

    from napari_ssmamba.slide import SLIDE_SUFFIXES

    manifest = yaml.safe_load(
        importlib.resources.files("napari_ssmamba").joinpath("napari.yaml").read_text()
    )
    [slides] = [r for r in manifest["contributions"]["readers"] if r["command"].endswith("slide")]
    claimed = {pattern.removeprefix("*") for pattern in slides["filename_patterns"]}
    assert set(SLIDE_SUFFIXES) <= claimed
