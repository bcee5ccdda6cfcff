"""Model tiles cut from a level's JPEG tiles (the GPU path) equal the slide reader's tiles.

On the CPU the batch reader runs with libjpeg-turbo (imagecodecs) as its decoder, so every
assembly rule (tile borders, slide and level edges, resampling) is checked pixel for pixel; the
nvJPEG decoder itself is checked on the GPU (marked ``gpu``).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import shapely

from napari_ssmamba.errors import BackendUnavailableError
from napari_ssmamba.inference import classify_slide
from napari_ssmamba.inference.jpeg_batches import (
    MAX_MEAN_DIFFERENCE,
    JpegBatchReader,
    libjpeg_decoder,
    tile_reader_for,
)
from napari_ssmamba.inference.predict import SlideTileReader
from napari_ssmamba.inference.tiling import tile_geometry
from napari_ssmamba.slide import open_slide


def cpu_decoder(slide, geometry, colorspace=None):
    """libjpeg-turbo for the level's JPEG tiles (``colorspace``: what the tiles are read as)."""
    jpeg = slide.jpeg_tiles(geometry.level)
    return libjpeg_decoder(colorspace or jpeg.colorspace)


def counting_decoder(slide, geometry):
    """libjpeg-turbo that notes how many JPEG tiles each call decodes: (the counts, the decoder)."""
    counts, plain = [], cpu_decoder(slide, geometry)

    def counting(streams, out):
        counts.append(len(streams))
        plain(streams, out)

    return counts, counting


@pytest.fixture(scope="module")
def ycbcr_pyramid(tmp_path_factory, sample_slide_path):
    """A 2-level YCbCr JPEG pyramid (256 px tiles, edges not on the tile grid) at 0.25 µm/px.

    Level 0 is one pixel wider and taller than twice level 1, so boxes at the right and bottom
    edges reach past level 1 (the slide's background there).
    """
    import tifffile

    with open_slide(sample_slide_path) as slide:
        level0 = slide.read_region(0, 0, 0, 1301, 1701)
    level1 = level0[:1300, :1700]
    level1 = level1.reshape(650, 2, 850, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("slides") / "pyramid.tif"
    options = {"tile": (256, 256), "compression": "jpeg", "photometric": "ycbcr"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, resolution=(40000, 40000), resolutionunit="CENTIMETER", **options)
        tif.write(level1, subfiletype=1, **options)
    return path


def boxes_over(slide, geometry, n=30, seed=0):
    """Boxes on and across the slide's edges, and one past its corner."""
    rng = np.random.default_rng(seed)
    width, height = slide.dimensions
    t = geometry.tile_l0
    xs = rng.integers(-t // 2, width, n)
    ys = rng.integers(-t // 2, height, n)
    xs[:4] = [width - t // 2, -7, 0, width + 3]
    ys[:4] = [height - 10, 5, height - t, 0]
    return np.stack([xs, ys, np.full(n, t), np.full(n, t)], axis=1)


def raster_boxes(slide, geometry, per_tile):
    """Boxes over the whole slide in raster order, as a plan gives them, ``per_tile`` to a tile's
    width (so each overlaps its neighbours)."""
    t = geometry.tile_l0
    width, height = slide.dimensions
    step = t // per_tile
    return np.array([[x, y, t, t] for y in range(0, height, step) for x in range(0, width, step)])


def tiles_both_ways(slide, geometry, boxes, batch=12):
    expected = np.stack([SlideTileReader(slide, geometry)(box) for box in boxes])
    reader = JpegBatchReader(slide, geometry, "cpu", decode=cpu_decoder(slide, geometry))
    got = np.concatenate(
        [reader(boxes[i : i + batch]).numpy() for i in range(0, len(boxes), batch)]
    )
    return expected, got


@pytest.mark.parametrize("model_mpp", [0.5, 0.6])
def test_aperio_rgb_tiles_equal_the_slide_reader(sample_slide, model_mpp):
    # Aperio stores R, G, B in its JPEG components (photometric RGB, shared JPEG tables)
    assert sample_slide.jpeg_tiles(0).colorspace == "RGB"
    geometry = tile_geometry(sample_slide.mpp, sample_slide.level_downsamples, 224, model_mpp)
    expected, got = tiles_both_ways(sample_slide, geometry, boxes_over(sample_slide, geometry))
    if geometry.read_size == geometry.tile_size:
        np.testing.assert_array_equal(got, expected)
    else:  # resampled on the device: bilinear with antialiasing, as PIL does, to one level
        assert geometry.read_size != 224
        assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("model_mpp", [0.5, 0.37])
def test_ycbcr_pyramid_tiles_equal_the_slide_reader(ycbcr_pyramid, model_mpp):
    with open_slide(ycbcr_pyramid) as slide:
        assert slide.jpeg_tiles(1).colorspace == "YCbCr"
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, model_mpp)
        assert geometry.level == (1 if model_mpp == 0.5 else 0)
        expected, got = tiles_both_ways(slide, geometry, boxes_over(slide, geometry))
    if geometry.read_size == geometry.tile_size:
        np.testing.assert_array_equal(got, expected)
    else:
        assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got[3] == 255).all()  # the box past the slide's corner is white


def test_a_tile_the_file_does_not_store_is_white(sample_slide):
    geometry = tile_geometry(sample_slide.mpp, sample_slide.level_downsamples, 224, 0.5)
    reader = JpegBatchReader(
        sample_slide, geometry, "cpu", decode=cpu_decoder(sample_slide, geometry)
    )
    reader.jpeg._sizes[0] = 0  # tile (0, 0), as a sparse TIFF leaves it
    assert not reader.jpeg.stored[0, 0]
    tile = reader(np.array([[0, 0, 224, 224]])).numpy()[0]
    tile_h, tile_w = reader.jpeg.tile_hw
    assert (tile[:tile_h, :tile_w] == 255).all()


def test_a_corrupt_tile_is_a_slide_error_naming_the_slide(ycbcr_pyramid, tmp_path):
    import tifffile

    from napari_ssmamba.errors import SlideError

    corrupt = tmp_path / "corrupt.tif"
    data = bytearray(ycbcr_pyramid.read_bytes())
    with tifffile.TiffFile(ycbcr_pyramid) as tif:  # tile (1, 2) of level 0: past the open check
        offset, count = tif.pages[0].dataoffsets[9], tif.pages[0].databytecounts[9]
    data[offset + 20 : offset + count] = b"\xff" * (count - 20)
    corrupt.write_bytes(bytes(data))
    with open_slide(corrupt) as slide:
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, 0.25)
        reader = JpegBatchReader(slide, geometry, "cpu", decode=cpu_decoder(slide, geometry))
        with pytest.raises(SlideError, match="corrupt.tif: cannot decode the JPEG tiles"):
            reader(np.array([[2 * 256 + 10, 256 + 10, 224, 224]]))


def test_decoded_tiles_are_reused_by_the_next_batch(ycbcr_pyramid):
    with open_slide(ycbcr_pyramid) as slide:
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, 0.5)
        decoded, counting = counting_decoder(slide, geometry)
        reader = JpegBatchReader(slide, geometry, "cpu", decode=counting)
        first = reader(np.array([[0, 0, 448, 448]]))  # level-1 pixels 0-223: JPEG tile (0, 0)
        again = reader(np.array([[448, 0, 448, 448]]))  # 224-447: tiles (0, 0) and (0, 1)
    assert decoded == [1, 1]
    assert first.shape == again.shape == (1, 224, 224, 3)


def test_tiles_kept_from_the_last_batch_land_in_the_right_place(ycbcr_pyramid):
    # raster order, as a plan gives: each batch shares JPEG tiles with the one before
    with open_slide(ycbcr_pyramid) as slide:
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, 0.5)
        boxes = raster_boxes(slide, geometry, per_tile=2)
        decoded, counting = counting_decoder(slide, geometry)
        reader = JpegBatchReader(slide, geometry, "cpu", decode=counting)
        got = np.concatenate([reader(boxes[i : i + 5]).numpy() for i in range(0, len(boxes), 5)])
        expected = np.stack([SlideTileReader(slide, geometry)(box) for box in boxes])
    np.testing.assert_array_equal(got, expected)
    assert sum(decoded) < 2 * reader.jpeg.stored.sum()  # most tiles decoded once


def test_check_catches_a_decoder_that_gets_the_colours_wrong(sample_slide):
    geometry = tile_geometry(sample_slide.mpp, sample_slide.level_downsamples, 224, 0.5)
    right = JpegBatchReader(
        sample_slide, geometry, "cpu", decode=cpu_decoder(sample_slide, geometry)
    )
    # decoding Aperio's RGB components as YCbCr: what a decoder does unless told
    wrong = JpegBatchReader(
        sample_slide, geometry, "cpu", decode=cpu_decoder(sample_slide, geometry, "YCbCr")
    )
    assert right.check() == 0.0
    assert wrong.check() > 20


def test_reader_choice_on_the_cpu(sample_slide, slides_dir):
    geometry = tile_geometry(sample_slide.mpp, sample_slide.level_downsamples, 224, 0.5)
    assert isinstance(tile_reader_for(sample_slide, geometry, "cpu"), SlideTileReader)
    with pytest.raises(BackendUnavailableError, match="CUDA devices"):
        tile_reader_for(sample_slide, geometry, "cpu", decoder="nvjpeg")
    with pytest.raises(ValueError, match="decoder must be one of"):
        tile_reader_for(sample_slide, geometry, "cpu", decoder="gpu")
    with open_slide(slides_dir / "kidney-48-5.tif", mpp=0.5) as striped:
        assert striped.jpeg_tiles(0) is None  # uncompressed strips
        geometry = tile_geometry(striped.mpp, striped.level_downsamples, 224, 0.5)
        with pytest.raises(ValueError, match="not stored as JPEG tiles"):
            JpegBatchReader(striped, geometry, "cpu")


def test_classify_slide_says_which_decoder_it_used(sample_slide, small_model):
    model, card = small_model
    result = classify_slide(sample_slide, model, card, device="cpu", attention=False)
    assert result.parameters["tile_decoder"] == "cpu"


def test_aperio_rgb_jpeg_is_not_for_nvjpeg(sample_slide):
    # nvJPEG colour-converts every three-component JPEG (seen on the H100), so RGB-coded tiles
    # would come out false-coloured: forcing nvJPEG says why not ("auto" takes libjpeg there)
    geometry = tile_geometry(sample_slide.mpp, sample_slide.level_downsamples, 224, 0.5)
    with pytest.raises(BackendUnavailableError, match="YCbCr JPEG tiles only"):
        tile_reader_for(sample_slide, geometry, "cuda", decoder="nvjpeg")


def test_libjpeg_in_batches_gives_the_cpu_readers_answer(sample_slide, small_model, slides_dir):
    model, card = small_model
    card = dataclasses.replace(card, mpp=0.5)  # 64 px tiles from level 0, the one stored level
    roi = [shapely.box(600, 600, 1400, 1400)]
    batched = classify_slide(sample_slide, model, card, roi, device="cpu", decoder="libjpeg")
    boxwise = classify_slide(sample_slide, model, card, roi, device="cpu", decoder="cpu")
    assert batched.parameters["tile_decoder"] == "libjpeg"
    np.testing.assert_array_equal(batched.tile_boxes_l0, boxwise.tile_boxes_l0)
    np.testing.assert_allclose(batched.tile_probabilities, boxwise.tile_probabilities, atol=1e-3)
    with open_slide(slides_dir / "kidney-48-5.tif", mpp=0.5) as striped:
        geometry = tile_geometry(striped.mpp, striped.level_downsamples, 224, 0.5)
        with pytest.raises(BackendUnavailableError, match="not stored as JPEG tiles"):
            tile_reader_for(striped, geometry, "cpu", decoder="libjpeg")


@pytest.mark.gpu
def test_nvjpeg_tiles_match_the_slide_reader(ycbcr_pyramid):
    with open_slide(ycbcr_pyramid) as slide:
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, 0.5)
        reader = tile_reader_for(slide, geometry, "cuda", decoder="nvjpeg")
        difference = reader.check()
        boxes = boxes_over(slide, geometry)
        expected = np.stack([SlideTileReader(slide, geometry)(box) for box in boxes])
        got = reader(boxes).cpu().numpy()
    # nvJPEG and libjpeg-turbo round the IDCT and upsample chroma differently
    assert difference <= MAX_MEAN_DIFFERENCE
    assert np.abs(got.astype(int) - expected).mean() <= MAX_MEAN_DIFFERENCE
    assert (got[3] == 255).all()  # past the slide's corner: white


@pytest.mark.gpu
def test_batch_after_batch_on_the_gpu_gives_the_tiles_of_one_batch(ycbcr_pyramid):
    # batches of growing sizes, each keeping JPEG tiles decoded for the one before, give on the
    # GPU (nvJPEG, the Triton gather) what one batch of all the boxes gives
    with open_slide(ycbcr_pyramid) as slide:
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, 0.5)
        boxes = raster_boxes(slide, geometry, per_tile=4)
        reader = JpegBatchReader(slide, geometry, "cuda")
        expected = reader(boxes).cpu().numpy()
        reader.reset()
        starts = np.cumsum([0, 1, 2, 3, 5, 8, 13, 21, 34])
        starts = [*starts[starts < len(boxes)], len(boxes)]
        got = np.concatenate(
            [reader(boxes[a:b]).cpu().numpy() for a, b in itertools.pairwise(starts)]
        )
    assert len(starts) > 6
    np.testing.assert_array_equal(got, expected)


@pytest.mark.gpu
def test_classify_slide_on_the_gpu_gives_the_cpu_decoders_answer(ycbcr_pyramid, small_model):
    model, card = small_model
    card = dataclasses.replace(card, mpp=0.5)  # 64 px tiles read from level 1's JPEG tiles
    with open_slide(ycbcr_pyramid) as slide:
        gpu = classify_slide(slide, model, card, device="cuda", decoder="nvjpeg")
        cpu = classify_slide(slide, model, card, device="cuda", decoder="cpu")
    assert gpu.parameters["tile_decoder"] == "nvjpeg"
    np.testing.assert_array_equal(gpu.tile_boxes_l0, cpu.tile_boxes_l0)
    np.testing.assert_allclose(gpu.tile_probabilities, cpu.tile_probabilities, atol=0.05)


@pytest.mark.gpu
def test_libjpeg_tiles_reach_the_gpu_unchanged(sample_slide):
    geometry = tile_geometry(sample_slide.mpp, sample_slide.level_downsamples, 224, 0.5)
    assert tile_reader_for(sample_slide, geometry, "cuda").decoder == "libjpeg"  # RGB-coded JPEG
    boxes = boxes_over(sample_slide, geometry)
    on_cpu = JpegBatchReader(
        sample_slide, geometry, "cpu", decode=cpu_decoder(sample_slide, geometry)
    )
    jpeg = sample_slide.jpeg_tiles(geometry.level)
    on_gpu = JpegBatchReader(
        sample_slide,
        geometry,
        "cuda",
        decode=libjpeg_decoder(jpeg.colorspace),
    )
    got = on_gpu(boxes)
    assert got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), on_cpu(boxes).numpy())


def test_the_gather_is_chosen_by_name(ycbcr_pyramid):
    with open_slide(ycbcr_pyramid) as slide:
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, 0.5)
        decode = cpu_decoder(slide, geometry)
        assert JpegBatchReader(slide, geometry, "cpu", decode=decode).gather == "torch"
        with pytest.raises(BackendUnavailableError, match="Triton: it runs on CUDA devices"):
            JpegBatchReader(slide, geometry, "cpu", decode=decode, gather="triton")
        with pytest.raises(ValueError, match="gather must be one of"):
            JpegBatchReader(slide, geometry, "cpu", decode=decode, gather="numpy")


@pytest.mark.gpu
@pytest.mark.parametrize("mpp", [0.5, 0.6])  # level 1 as it is; resampled
def test_the_triton_gather_gives_torch_indexings_tiles(ycbcr_pyramid, mpp):
    with open_slide(ycbcr_pyramid) as slide:
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, mpp)
        boxes = boxes_over(slide, geometry)
        readers = [JpegBatchReader(slide, geometry, "cuda", gather=g) for g in ("triton", "torch")]
        assert [reader.gather for reader in readers] == ["triton", "torch"]
        half = len(boxes) // 2
        for batch in (boxes[:half], boxes[half:]):  # the second batch keeps tiles of the first
            got, expected = (reader(batch).cpu().numpy() for reader in readers)
            np.testing.assert_array_equal(got, expected)


def test_the_plans_index_parts_start_on_16_bytes(ycbcr_pyramid):
    # Triton compiles a kernel per alignment of its pointers: aligned parts keep it to one
    with open_slide(ycbcr_pyramid) as slide:
        geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, 0.5)
        reader = JpegBatchReader(slide, geometry, "cpu", decode=cpu_decoder(slide, geometry))
        boxes = boxes_over(slide, geometry)
        plans = [reader.plan(boxes[i : i + 7]) for i in range(0, len(boxes), 7)]
    assert any(plan.kept % 4 for plan in plans)  # kept counts that are not multiples of four
    for plan in plans:
        assert plan.slot_start % 4 == 0 and plan.axes_start % 4 == 0
        assert plan.slot_start >= plan.kept
