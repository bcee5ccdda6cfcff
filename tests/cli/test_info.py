import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from napari_ssmamba.cli import main


def test_info_text(slides_dir):
    result = CliRunner().invoke(main, ["info", str(slides_dir / "CMU-1-Small-Region.svs")])
    assert result.exit_code == 0, result.output
    assert "aperio (read with OpenSlideSlide, pixels decoded by tifffile)" in result.output
    assert "2220 x 2967 px" in result.output
    assert "MPP         0.499 x 0.499 µm/px" in result.output
    assert "555 x 741     downsample 4  (computed)" in result.output
    assert "label (387 x 463)" in result.output


def test_info_json_multiplexed(slides_dir):
    result = CliRunner().invoke(main, ["info", "--json", str(slides_dir / "small_vectra.qptiff")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["vendor"] == "qptiff"
    assert info["channels"] == ["DAPI", "FITC", "Cy3"]
    assert info["levels"][0] == {"level": 0, "dimensions": [1920, 1440], "downsample": 1.0,
                                 "stored": True}
    assert info["mpp"] == pytest.approx([0.4965346, 0.4965346])
    assert set(info["associated"]) == {"thumbnail", "macro", "label"}


def test_info_without_mpp(slides_dir):
    result = CliRunner().invoke(main, ["info", "--json", str(slides_dir / "kidney-48-5.tif")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mpp"] is None


@pytest.mark.parametrize("name, reason", [("corrupt/unopenable.tiff", "52479"),
                                          ("corrupt/unreadable.svs", "Bogus marker length"),
                                          ("nothing-here.svs", "no such file")])
def test_info_bad_slide_fails_with_the_reason(slides_dir, name, reason):
    result = CliRunner().invoke(main, ["info", str(slides_dir / name)])
    assert result.exit_code == 1
    assert "Error:" in result.output and reason in result.output
    assert Path(name).name in result.output
