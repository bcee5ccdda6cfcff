import json
import shutil

import pytest

from napari_ssmamba.annotations import read_qupath_project
from napari_ssmamba.errors import AnnotationError


def test_demo_project(demo_project_dir):
    project = read_qupath_project(demo_project_dir / "project.qpproj")
    assert project.version == "0.6.0"
    [image] = project.images
    assert (image.entry_id, image.name) == ("1", "TD_01_verysmall_mIF.ome.tif")
    assert (image.width, image.height) == (1000, 1000)
    assert image.mpp == pytest.approx((0.34571008852182383, 0.34571008852182383))
    assert image.server_metadata["pixelType"] == "UINT16"
    assert len(image.server_metadata["channels"]) == 15
    assert image.stem == "TD_01_verysmall_mIF"
    # The slide itself is not in the repository: missing, with a message saying where it should be.
    assert not image.exists
    assert (
        str(image.expected_path)
        == "/Volumes/RD_Coscia/Jose/__TestDatasets/TD_01_verysmall_mIF.ome.tif"
    )
    assert "/Volumes/RD_Coscia/Jose/__TestDatasets" in image.missing_message()
    assert project.classes["class_1"] == (3, 128, 17)
    assert project.classes["single_cells_demo"] == (255, 0, 255)
    assert image.qpdata_path is None


def test_directory_is_accepted(demo_project_dir):
    assert read_qupath_project(demo_project_dir).path.name == "project.qpproj"


def test_geojson_beside_the_project(demo_project_dir):
    project = read_qupath_project(demo_project_dir)
    image = project.images[0]
    files = project.geojson_files(image)
    assert [p.name for p in files] == ["TD_01_verysmall_mIF.geojson", "Single_cells.geojson"]
    annotations = project.annotations_for_image(image)
    assert len(annotations) == 9 + 131


def make_project(tmp_path, image_uri, project_uri, extra_entry=None):
    directory = tmp_path / "moved" / "project"
    (directory / "data" / "1").mkdir(parents=True)
    entry = {
        "serverBuilder": {
            "builderType": "rotated",
            "rotation": "ROTATE_180",
            "builder": {
                "builderType": "uri",
                "uri": image_uri,
                "metadata": {"width": 10, "height": 20},
            },
        },
        "entryID": 1,
        "imageName": "slide 1.svs",
        "metadata": {"Patient": "P-01"},
    }
    entry.update(extra_entry or {})
    project = {"version": "0.5.1", "uri": project_uri, "images": [entry]}
    (directory / "project.qpproj").write_text(json.dumps(project), encoding="utf-8")
    return directory


def test_moved_project_finds_the_image_relative_to_it(tmp_path):
    directory = make_project(
        tmp_path,
        image_uri="file:/old/place/slides/slide%201.svs",
        project_uri="file:/old/place/project/project.qpproj",
    )
    slide = tmp_path / "moved" / "slides" / "slide 1.svs"
    slide.parent.mkdir()
    slide.write_bytes(b"not really a slide")
    (directory / "data" / "1" / "data.qpdata").write_bytes(b"\xac\xed\x00\x05")
    [image] = read_qupath_project(directory).images
    assert image.path == slide
    assert image.expected_path.as_posix() == "/old/place/slides/slide 1.svs"
    assert (image.width, image.height, image.mpp) == (10, 20, None)
    assert image.metadata == {"Patient": "P-01"}
    assert image.qpdata_path is not None


def test_image_found_by_name_beside_the_project(tmp_path):
    directory = make_project(
        tmp_path, "file:/C:/Users/me/slide%201.svs", "file:/C:/Users/me/p/project.qpproj"
    )
    (directory / "slide 1.svs").write_bytes(b"x")
    [image] = read_qupath_project(directory).images
    assert image.path == directory / "slide 1.svs"


def test_geojson_in_data_folder_and_by_prefix(tmp_path):
    directory = make_project(tmp_path, "file:/x/slide%201.svs", "file:/x/p/project.qpproj")
    (directory / "data" / "1" / "objects.geojson").write_text("[]", encoding="utf-8")
    (directory / "export").mkdir()
    (directory / "export" / "slide 1-cells.geojson").write_text("[]", encoding="utf-8")
    project = read_qupath_project(directory)
    names = [p.name for p in project.geojson_files(project.images[0])]
    assert names == ["slide 1-cells.geojson", "objects.geojson"]


def test_malformed_project(tmp_path):
    (tmp_path / "project.qpproj").write_text("{not json", encoding="utf-8")
    with pytest.raises(AnnotationError, match="project.qpproj"):
        read_qupath_project(tmp_path)
    with pytest.raises(FileNotFoundError, match="project.qpproj"):
        read_qupath_project(tmp_path / "elsewhere")
    geojson = tmp_path / "rois.json"  # JSON, but not a project
    geojson.write_text('{"type": "FeatureCollection", "features": []}', encoding="utf-8")
    with pytest.raises(AnnotationError, match="rois.json is not a QuPath project"):
        read_qupath_project(geojson)


def test_copied_demo_project_with_the_image_beside_it(demo_project_dir, tmp_path):
    copy = shutil.copytree(demo_project_dir, tmp_path / "demo")
    (copy / "TD_01_verysmall_mIF.ome.tif").write_bytes(b"x")
    [image] = read_qupath_project(copy).images
    assert image.path == copy / "TD_01_verysmall_mIF.ome.tif"
