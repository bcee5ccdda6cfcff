import json
import shutil
from pathlib import Path

import pytest

from napari_ssmamba.gui.qupath_project_widget import QuPathProjectWidget

DATA = Path(__file__).parents[2] / ".." / "shared" / "data"
SAMPLE_SLIDE = (
    Path(__file__).parents[2] / "src" / "napari_ssmamba" / "data" / "CMU-1-Small-Region.svs"
)


@pytest.fixture(scope="module")
def demo_project_dir() -> Path:
    path = DATA / "annotations" / "qupath-demo-project"
    if not path.is_dir():
        pytest.skip(f"test data not found at {path.resolve()}")
    return path.resolve()


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    widget = QuPathProjectWidget(make_napari_viewer())
    qtbot.addWidget(widget)
    return widget


def test_lists_the_demo_project(widget, demo_project_dir):
    widget.load_project(demo_project_dir / "project.qpproj")
    assert widget.table.rowCount() == 1
    assert widget.table.item(0, 0).text() == "TD_01_verysmall_mIF.ome.tif"
    assert widget.table.item(0, 1).text() == "1000 × 1000"
    assert widget.table.item(0, 2).text() == "0.3457"
    assert widget.table.item(0, 3).text().startswith("missing (expected /Volumes/RD_Coscia")
    assert widget.selected_image().name == "TD_01_verysmall_mIF.ome.tif"
    details = widget.details.text()
    assert "UINT16" in details and "15 channels" in details
    assert "TD_01_verysmall_mIF.geojson, Single_cells.geojson" in details


def test_missing_image_says_where_it_was_expected(widget, demo_project_dir):
    widget.load_project(demo_project_dir)
    widget.open_button.click()
    assert "not found" in widget.status.text()
    assert (
        "/Volumes/RD_Coscia/Jose/__TestDatasets/TD_01_verysmall_mIF.ome.tif" in widget.status.text()
    )
    assert len(widget.viewer.layers) == 0


def test_loads_the_geojson_exported_beside_the_project(widget, demo_project_dir):
    widget.load_project(demo_project_dir)
    widget.annotations_button.click()
    layers = widget.viewer.layers
    assert [layer.name for layer in layers] == [
        "TD_01_verysmall_mIF",
        "TD_01_verysmall_mIF points",
        "Single_cells",
        "Single_cells cells",
        "Single_cells points",
    ]
    assert len(layers["Single_cells cells"].data) == 121
    assert tuple(layers["Single_cells"].scale) == pytest.approx((0.34571, 0.34571), abs=1e-5)
    assert widget.status.text().startswith(
        "Loaded TD_01_verysmall_mIF.geojson, Single_cells.geojson"
    )


def test_qpdata_only_explains_how_to_export(widget, demo_project_dir, tmp_path):
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(demo_project_dir / "project.qpproj", copy)
    (copy / "data" / "1").mkdir(parents=True)
    (copy / "data" / "1" / "data.qpdata").write_bytes(b"\xac\xed\x00\x05")
    widget.load_project(copy)
    widget.annotations_button.click()
    message = widget.status.text()
    assert "Java object serialization" in message and "File > Export objects as GeoJSON" in message
    assert "TD_01_verysmall_mIF.geojson" in message
    widget.load_geojson_file(copy / "data" / "1" / "data.qpdata")
    assert "Export objects as GeoJSON" in widget.status.text()
    assert len(widget.viewer.layers) == 0


def test_opens_an_image_that_exists_and_aligns_annotations(widget, tmp_path, demo_project_dir):
    if not SAMPLE_SLIDE.is_file():
        pytest.skip("sample slide not bundled")
    project = {
        "version": "0.6.0",
        "images": [
            {
                "serverBuilder": {"builderType": "uri", "uri": SAMPLE_SLIDE.resolve().as_uri()},
                "entryID": 1,
                "imageName": "CMU-1-Small-Region.svs",
            }
        ],
    }
    (tmp_path / "project.qpproj").write_text(json.dumps(project), encoding="utf-8")
    widget.load_project(tmp_path)
    widget.open_button.click()
    [slide] = widget.viewer.layers
    assert widget.status.text() == f"Opened {SAMPLE_SLIDE.resolve()}."
    other = widget.viewer.add_shapes(
        name="another image's", metadata={"napari_ssmamba": {"kind": "annotations"}}, scale=(2, 2)
    )
    layers = widget.load_geojson_file(demo_project_dir / "TD_01_verysmall_mIF.geojson")
    assert layers and all(tuple(layer.scale) == tuple(slide.scale[-2:]) for layer in layers)
    assert tuple(other.scale) == (2.0, 2.0)  # only the file's layers move onto the slide


def test_bad_project_file(widget, tmp_path):
    (tmp_path / "project.qpproj").write_text("{", encoding="utf-8")
    widget.load_project(tmp_path)
    assert "not a readable QuPath project" in widget.status.text()
    assert widget.table.rowCount() == 0
