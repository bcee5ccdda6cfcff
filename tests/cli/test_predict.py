"""``ssmamba predict`` end to end: same outputs as ``ssmamba classify``, resume, a corrupt slide."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from napari_ssmamba.cli import main

SLIDES = Path(__file__).parents[2] / ".." / "shared" / "data" / "slides"
GOOD = ("CMU-1-Small-Region", "OS-1-detail", "generated")
STRIDE = ["--stride-px", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of slides: two real ones, one generated tiled TIFF and a corrupt .svs."""
    if not (SLIDES / "CMU-1-Small-Region.svs").is_file():
        pytest.skip(f"test slides not found in {SLIDES}")
    import openslide
    import tifffile

    folder = tmp_path_factory.mktemp("slides")
    for name in ("CMU-1-Small-Region.svs", "OS-1-detail.ome.tif", "corrupt/unreadable.svs"):
        (folder / Path(name).name).symlink_to((SLIDES / name).resolve())
    with openslide.OpenSlide(SLIDES / "CMU-1-Small-Region.svs") as source:
        rgb = np.asarray(source.read_region((900, 1200), 0, (896, 640)).convert("RGB"))
    tifffile.imwrite(folder / "generated.tif", rgb, tile=(256, 256), photometric="rgb",
                     compression="jpeg", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    (folder / "README.txt").write_text("not a slide")
    return folder


@pytest.fixture(scope="module")
def roi_dir(tmp_path_factory) -> Path:
    """QuPath GeoJSON with two named ROIs, for CMU-1-Small-Region only."""
    folder = tmp_path_factory.mktemp("rois")
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[x0, y0], [x0 + 700, y0], [x0 + 700, y0 + 900], [x0, y0 + 900], [x0, y0]]]},
         "properties": {"objectType": "annotation", "name": name}}
        for name, x0, y0 in (("upper", 300, 200), ("lower", 1100, 1700))
    ]
    (folder / "CMU-1-Small-Region.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features}))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from napari_ssmamba.model import ModelCard, create_model, save_checkpoint

    model = create_model("ssmamba_test", num_classes=3)
    cfg = model.pretrained_cfg
    card = ModelCard(arch="ssmamba_test", class_names=["tumor", "stroma", "other"],
                     class_colors=[(200, 0, 0), (0, 150, 0), (0, 0, 200)],
                     tile_size=64, mpp=2.0, mean=cfg["mean"], std=cfg["std"],
                     untrained=True)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_checkpoint(model, card, path)
    return path


@pytest.fixture(scope="module")
def batch_run(inputs, roi_dir, checkpoint, tmp_path_factory):
    """``ssmamba predict`` over the folder with two local workers: (result, out folder)."""
    out = tmp_path_factory.mktemp("batch")
    result = CliRunner().invoke(main, ["predict", str(inputs), "--model", str(checkpoint),
                                       "--out", str(out), "--roi-dir", str(roi_dir), "--workers",
                                       "2", "--worker-threads", *STRIDE])
    return result, out


@pytest.fixture(scope="module")
def single_runs(inputs, roi_dir, checkpoint, tmp_path_factory) -> Path:
    """``ssmamba classify`` on each good slide (with its ROIs where it has any), in one folder."""
    out = tmp_path_factory.mktemp("single")
    for slide in sorted(inputs.iterdir()):
        stem = slide.name.split(".")[0]
        if stem in GOOD:
            rois = roi_dir / f"{stem}.geojson"
            roi_args = ["--roi", str(rois)] if rois.exists() else []
            result = CliRunner().invoke(main, ["classify", str(slide), "--model", str(checkpoint),
                                               "--out", str(out), *roi_args, *STRIDE])
            assert result.exit_code == 0, result.output
    return out


def read_summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as fh:
        return {row["stem"]: row for row in csv.DictReader(fh)}


def assert_same_outputs(out_a: Path, out_b: Path, stem: str) -> None:
    import tifffile
    from PIL import Image

    assert (out_a / f"{stem}.tiles.csv").read_text() == (out_b / f"{stem}.tiles.csv").read_text()
    assert (out_a / f"{stem}.geojson").read_text() == (out_b / f"{stem}.geojson").read_text()
    with tifffile.TiffFile(out_a / f"{stem}.heatmap.tif") as a, \
            tifffile.TiffFile(out_b / f"{stem}.heatmap.tif") as b:
        assert len(a.pages) == len(b.pages)
        for page_a, page_b in zip(a.pages, b.pages):
            np.testing.assert_array_equal(page_a.asarray(), page_b.asarray())
    np.testing.assert_array_equal(np.asarray(Image.open(out_a / f"{stem}.png")),
                                  np.asarray(Image.open(out_b / f"{stem}.png")))
    record_a = json.loads((out_a / f"{stem}.run.json").read_text())
    record_b = json.loads((out_b / f"{stem}.run.json").read_text())
    assert record_a["summary"] == record_b["summary"]
    assert record_a["model"]["card_sha256"] == record_b["model"]["card_sha256"]


def test_predict_writes_what_classify_writes(batch_run, single_runs):
    result, out = batch_run
    for stem in GOOD:
        assert_same_outputs(out, single_runs, stem)


def test_predict_reports_the_corrupt_slide_and_finishes_the_others(batch_run):
    result, out = batch_run
    assert result.exit_code == 1, result.output
    summary = read_summary(out)
    assert sorted(summary) == sorted([*GOOD, "unreadable"])
    assert summary["unreadable"]["status"] == "failed"
    assert "unreadable.svs" in summary["unreadable"]["reason"]
    classes = ("tumor", "stroma", "other")
    for stem in GOOD:
        assert summary[stem]["status"] == "ok", summary[stem]
        assert int(summary[stem]["tiles"]) > 0
    assert summary["generated"]["top_class"] in classes
    assert summary["generated"]["rois"] == "whole tissue"
    # the slide with an ROI file: one class per ROI
    assert summary["CMU-1-Small-Region"]["rois"] == "CMU-1-Small-Region.geojson"
    upper, lower = summary["CMU-1-Small-Region"]["top_class"].split("; ")
    assert upper.split("=")[0] == "upper" and upper.split("=")[1] in classes
    assert lower.split("=")[0] == "lower" and lower.split("=")[1] in classes
    (record_path,) = out.glob("predict-*.json")
    record = json.loads(record_path.read_text())
    assert record["counts"] == {"ok": 3, "skipped": 0, "failed": 1}
    assert record["cluster"]["workers"] == 2
    assert record["arguments"]["stride_px"] == 64
    assert "unreadable" in result.output and "failed" in result.output


def test_resumed_run_recomputes_only_unfinished_slides(batch_run, inputs, roi_dir, checkpoint,
                                                       tmp_path):
    """A run killed mid-way: one slide lost its run record, one has a truncated CSV and a leftover
    temporary file. Re-run on an existing cluster (--scheduler): only those two are recomputed."""
    from distributed import LocalCluster

    _, out = batch_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    (resumed / "CMU-1-Small-Region.run.json").unlink()
    csv_path = resumed / "generated.tiles.csv"
    csv_path.write_text(csv_path.read_text()[:40])
    part = resumed / ".generated.heatmap.tif.k3j2.part"
    part.write_bytes(b"II*\x00")

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        result = CliRunner().invoke(main, ["predict", str(inputs), "--model", str(checkpoint),
                                           "--out", str(resumed), "--roi-dir", str(roi_dir),
                                           "--scheduler", cluster.scheduler_address, *STRIDE])
    assert result.exit_code == 1, result.output
    summary = read_summary(resumed)
    assert {stem: row["status"] for stem, row in summary.items()} == {
        "CMU-1-Small-Region": "ok", "generated": "ok", "OS-1-detail": "skipped",
        "unreadable": "failed"}
    assert not part.exists()
    for stem in GOOD:
        assert_same_outputs(resumed, out, stem)
    records = [json.loads(p.read_text()) for p in resumed.glob("predict-*.json")]
    assert {"ok": 2, "skipped": 1, "failed": 1} in [r["counts"] for r in records]


def test_predict_usage_errors(inputs, checkpoint, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["predict", str(inputs), "--model", str(checkpoint), "--out",
                                  str(tmp_path), "--scheduler", "tcp://127.0.0.1:1", "--workers",
                                  "2"])
    assert result.exit_code == 2
    assert "--workers" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["predict", str(empty), "--model", str(checkpoint), "--out",
                                  str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no slides" in result.output
    (tmp_path / "afile").touch()
    result = runner.invoke(main, ["predict", str(inputs), "--model", str(checkpoint), "--out",
                                  str(tmp_path / "afile" / "out")])
    assert result.exit_code == 1 and "outputs cannot be written there" in result.output
