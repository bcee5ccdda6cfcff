"""``ssmamba classify`` through CliRunner on the bundled sample slide with a small untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely
from click.testing import CliRunner

from napari_ssmamba.cli import main

SAMPLE = Path(__file__).parents[2] / "src" / "napari_ssmamba" / "data" / "CMU-1-Small-Region.svs"
DATA = Path(__file__).parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from napari_ssmamba.model import ModelCard, create_model, save_checkpoint

    torch.manual_seed(0)
    card = ModelCard(
        arch="ssmamba_test",
        class_names=["Tumor", "Stroma"],
        class_colors=[(220, 20, 20), (20, 160, 20)],
        tile_size=64,
        mpp=2.0,
        untrained=True,
    )
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    return save_checkpoint(create_model("ssmamba_test", num_classes=2), card, path)


def test_classify_rois(tmp_path, checkpoint):
    from napari_ssmamba.annotations import Annotation, write_geojson
    from napari_ssmamba.export import outputs_complete

    rois = tmp_path / "rois.geojson"
    write_geojson([Annotation(shapely.box(700, 700, 1500, 1500), name="square")], rois)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "classify",
            str(SAMPLE),
            "--roi",
            str(rois),
            "--model",
            str(checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--stride-px",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "square:" in result.output and "untrained" in result.output
    assert outputs_complete(out, "CMU-1-Small-Region")
    record = json.loads((out / "CMU-1-Small-Region.run.json").read_text())
    assert record["parameters"]["stride_model_px"] == 32
    assert record["parameters"]["tile_decoder"] == "cpu"
    assert record["run_info"]["roi_file"] == str(rois)
    assert record["summary"]["rois"][0]["class"] in ("Tumor", "Stroma")


def test_missing_mpp_is_a_clear_error_and_mpp_option_fixes_it(tmp_path, checkpoint):
    slide = DATA / "slides" / "kidney-48-5.tif"
    if not slide.exists():
        pytest.skip("real test data (../shared/data) not present")
    args = [
        "classify",
        str(slide),
        "--model",
        str(checkpoint),
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "kidney-48-5.tif" in result.output and "--mpp" in result.output
    result = CliRunner().invoke(main, [*args, "--mpp", "2.0,2.0"])
    assert result.exit_code == 0, result.output


def test_bad_options(tmp_path, checkpoint):
    runner = CliRunner()
    for mpp in ("x", "nan", "inf", "0", "1000", "1e-9", "0.5,0.5,0.5"):
        result = runner.invoke(main, ["classify", str(SAMPLE), "--out", str(tmp_path), "--mpp", mpp])
        assert result.exit_code == 2 and "--mpp" in result.output, mpp
    afile = tmp_path / "afile"
    afile.touch()
    result = runner.invoke(main, ["classify", str(SAMPLE), "--out", str(afile / "sub")])
    assert result.exit_code == 1  # said before the model is loaded and the slide classified
    assert "afile/sub: outputs cannot be written there" in result.output
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    result = runner.invoke(
        main,
        [
            "classify",
            str(SAMPLE),
            "--model",
            str(checkpoint),
            "--roi",
            str(bad),
            "--out",
            str(tmp_path / "new"),
        ],
    )
    assert result.exit_code == 1 and "bad.geojson" in result.output
    assert not (tmp_path / "new").exists()  # the folder made for the run goes with it


def test_forcing_nvjpeg_where_it_cannot_run_says_why(tmp_path, checkpoint):
    # the sample is Aperio RGB-coded JPEG, and this is a CPU: nvJPEG cannot read it either way
    args = ["classify", str(SAMPLE), "--model", str(checkpoint), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--decoder", "nvjpeg"])
    assert result.exit_code == 1
    assert "cannot decode tiles with nvJPEG" in result.output and "'cpu'" in result.output
    assert not (tmp_path / "out" / "CMU-1-Small-Region.run.json").exists()
