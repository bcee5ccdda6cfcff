import csv
import json

import numpy as np
import pytest
import shapely

from napari_ssmamba.export import output_paths, outputs_complete, write_outputs
from napari_ssmamba.export.tiff import write_pyramidal_tiff


@pytest.fixture(scope="module")
def roi_result(small_model, sample_slide_path):
    from napari_ssmamba.annotations import Annotation
    from napari_ssmamba.inference import classify_slide
    from napari_ssmamba.slide import open_slide

    model, card = small_model
    rois = [
        Annotation(
            shapely.box(700, 700, 1500, 1500),
            name="square",
            class_name="Necrosis",  # the pathologist's label
            measurements={"Area µm^2": 159201.0},
        ),
        Annotation(shapely.Point(1400, 2300).buffer(350), name="disc", is_ellipse=True),
    ]
    with open_slide(sample_slide_path) as slide:
        result = classify_slide(slide, model, card, rois=rois, device="cpu", attention=False)
        thumbnail = slide.get_thumbnail(512)
    return result, thumbnail


@pytest.fixture(scope="module")
def written(roi_result, tmp_path_factory):
    result, thumbnail = roi_result
    out = tmp_path_factory.mktemp("out")
    return out, write_outputs(result, out, run_info={"why": "test"}, thumbnail=thumbnail)


def test_all_outputs_and_record_last(written):
    out, paths = written
    assert set(paths) == {"geojson", "heatmap", "figure", "tiles", "run"}
    assert all(p.exists() for p in paths.values())
    assert outputs_complete(out, "CMU-1-Small-Region")
    record = json.loads(paths["run"].read_text())
    assert set(record["outputs"]) == {"geojson", "heatmap", "figure", "tiles"}
    assert record["model"]["untrained"] is True and len(record["model"]["card_sha256"]) == 64
    assert record["run_info"] == {"why": "test"}
    assert "torch" in record["versions"] and record["parameters"]["tile_size"] == 64
    assert not list(out.glob("*.part"))


def test_tampered_output_is_incomplete(written, tmp_path):
    _, paths = written
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in paths.values():
        (copy / p.name).write_bytes(p.read_bytes())
    assert outputs_complete(copy, "CMU-1-Small-Region")
    (copy / paths["tiles"].name).write_text("minx\n")
    assert not outputs_complete(copy, "CMU-1-Small-Region")
    assert not outputs_complete(copy, "another-slide")


def test_csv_columns(written, roi_result):
    result, _ = roi_result
    with open(written[1]["tiles"], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["minx", "miny", "width", "height", "prob_Tumor", "prob_Stroma", "prob_Other"]
    assert len(rows) == result.n_tiles + 1
    first = [float(v) for v in rows[1]]
    assert first[:4] == result.tile_boxes_l0[0].tolist()
    assert sum(first[4:]) == pytest.approx(1, abs=1e-4)


def test_geojson_reads_back(written, roi_result):
    from napari_ssmamba.annotations import read_geojson

    result, _ = roi_result
    objects = read_geojson(written[1]["geojson"])
    rois = [o for o in objects if o.object_type == "annotation"]
    tiles = [o for o in objects if o.object_type == "detection"]
    assert [r.name for r in rois] == ["square", "disc"]
    assert rois[1].is_ellipse
    # the square's own class and measurement are kept beside the prediction
    assert rois[0].extra_properties["metadata"] == {"input_class": "Necrosis"}
    assert rois[0].measurements["Area µm^2"] == 159201.0
    assert "metadata" not in rois[1].extra_properties
    for roi, expected in zip(rois, result.rois):
        assert roi.class_name == expected.class_name
        assert roi.color == result.class_colors[expected.class_index]
        assert roi.measurements["n_tiles"] == expected.n_tiles
        assert roi.measurements["prob_Tumor"] == pytest.approx(expected.probabilities[0])
    assert len(tiles) == result.n_tiles
    assert {"prob_Tumor", "prob_Stroma", "prob_Other", "tissue_fraction"} <= set(
        tiles[0].measurements
    )


def test_heatmap_tiff_opens_in_openslide_with_mpp(written, roi_result):
    import openslide

    result, _ = roi_result
    with openslide.OpenSlide(str(written[1]["heatmap"])) as tiff:
        pixel_l0 = result.slide_dimensions_wh[0] / tiff.dimensions[0]
        assert float(tiff.properties["openslide.mpp-x"]) == pytest.approx(
            result.mpp_yx[1] * pixel_l0, rel=0.01
        )
        # the heatmap registers with the slide: a tile's colour sits at its level-0 box / pixel size
        box = result.tile_boxes_l0[len(result.tile_boxes_l0) // 2]
        cx, cy = (box[0] + box[2] / 2) / pixel_l0, (box[1] + box[3] / 2) / pixel_l0
        pixel = np.asarray(tiff.read_region((int(cx), int(cy)), 0, (1, 1)))[0, 0, :3]
        assert tuple(pixel) != (255, 255, 255)
        assert tuple(np.asarray(tiff.read_region((0, 0), 0, (1, 1)))[0, 0, :3]) == (255, 255, 255)


def test_pyramidal_tiff_levels(tmp_path):
    import openslide
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 255, (700, 1100, 3), dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "h.tif", rgb, (2.0, 2.0))
    with tifffile.TiffFile(path) as tif:
        assert [p.shape[:2] for p in tif.pages] == [(700, 1100), (350, 550), (175, 275), (87, 137)]
        assert all(p.is_tiled for p in tif.pages) and [p.subfiletype for p in tif.pages] == [
            0,
            1,
            1,
            1,
        ]
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 4
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(2.0)
        np.testing.assert_array_equal(
            np.asarray(slide.read_region((0, 0), 0, (1100, 700)))[..., :3], rgb
        )


def test_failure_leaves_no_record_and_no_partial_file(roi_result, tmp_path, monkeypatch):
    from PIL import Image

    result, thumbnail = roi_result
    write_outputs(result, tmp_path, thumbnail=thumbnail)
    assert outputs_complete(tmp_path, result.stem)

    def broken(image, fp, format=None):
        fp.write_bytes(b"half a png")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(result, tmp_path, thumbnail=thumbnail)
    assert not output_paths(tmp_path, result.stem)["run"].exists()
    assert not outputs_complete(tmp_path, result.stem)
    assert not list(tmp_path.glob(".*.part"))
    assert output_paths(tmp_path, result.stem)["figure"].read_bytes()[:4] == b"\x89PNG"


def test_rois_without_a_prediction_keep_their_class_and_get_no_zeros(
    small_model, sample_slide_path
):
    from napari_ssmamba.annotations import Annotation
    from napari_ssmamba.export.geojson import result_annotations
    from napari_ssmamba.inference import classify_slide
    from napari_ssmamba.slide import open_slide

    glass = Annotation(shapely.box(1500, 0, 2100, 300), class_name="Other", color=(10, 20, 30))
    beyond = Annotation(shapely.box(300, 5367, 900, 5967), name="from another slide")
    with open_slide(sample_slide_path) as slide, pytest.warns(UserWarning, match="outside"):
        result = classify_slide(slide, *small_model, rois=[glass, beyond], device="cpu")
    exported = result_annotations(result, tiles=False)
    assert [(a.class_name, a.color, a.name) for a in exported] == [
        ("Other", (10, 20, 30), None),  # the pathologist's label and its (lack of a) name
        (None, None, "from another slide"),
    ]
    assert [a.measurements for a in exported] == [
        {"n_tiles": 0, "n_background_tiles": result.rois[0].n_background_tiles},
        {"n_tiles": 0, "n_background_tiles": 0},
    ]
    assert result.rois[0].n_background_tiles > 0


def test_an_roi_read_back_from_a_result_carries_none_of_it(
    small_model, sample_slide_path, written, tmp_path
):
    # the QuPath round trip: our GeoJSON back in, the square moved off the slide, run again
    import shapely.affinity

    from napari_ssmamba.annotations import read_geojson
    from napari_ssmamba.export.geojson import result_annotations
    from napari_ssmamba.inference import classify_slide
    from napari_ssmamba.slide import open_slide

    square = next(a for a in read_geojson(written[1]["geojson"]) if a.name == "square")
    assert square.measurements["confidence"] > 0 and square.class_name != "Necrosis"
    square.geometry = shapely.affinity.translate(square.geometry, yoff=5000)
    with open_slide(sample_slide_path) as slide, pytest.warns(UserWarning, match="outside"):
        result = classify_slide(slide, *small_model, rois=[square], device="cpu")
    [exported] = result_annotations(result, tiles=False)
    assert exported.class_name == "Necrosis"  # the pathologist's, not the last prediction
    assert exported.measurements == {"Area µm^2": 159201.0, "n_tiles": 0, "n_background_tiles": 0}
    assert exported.extra_properties["metadata"] == {"input_class": "Necrosis"}


def test_the_heatmap_of_a_coarse_slide_keeps_a_pixel_size_readers_accept(
    small_model, sample_slide_path, tmp_path
):
    from napari_ssmamba.export import write_heatmap_tiff
    from napari_ssmamba.inference import classify_slide
    from napari_ssmamba.slide import open_slide

    with open_slide(sample_slide_path, mpp=4.0) as slide:  # a 4 µm/px scan
        result = classify_slide(slide, *small_model, device="cpu", attention=False)
    path = write_heatmap_tiff(result, tmp_path / "coarse.heatmap.tif")
    with open_slide(path) as heatmap:  # 16 level-0 px would be 64 µm/px, beyond what we trust
        assert heatmap.mpp is not None and max(heatmap.mpp) <= 8.0
        assert heatmap.properties["tiff.ImageDescription"].startswith("napari-ssmamba heatmap")
