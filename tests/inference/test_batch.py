"""Batch prediction on a dask cluster: slide discovery, one task per slide, resume, failures."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_ssmamba.errors import CancelledError
from napari_ssmamba.inference import batch

SLIDES = Path(__file__).parents[2] / ".." / "shared" / "data" / "slides"


@pytest.fixture(scope="module")
def slides_dir() -> Path:
    if not (SLIDES / "CMU-1-Small-Region.svs").is_file():
        pytest.skip(f"test slides not found in {SLIDES}")
    return SLIDES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained ``ssmamba_test`` checkpoint."""
    from napari_ssmamba.model import ModelCard, create_model, save_checkpoint

    model = create_model("ssmamba_test", num_classes=2)
    cfg = model.pretrained_cfg
    card = ModelCard(arch="ssmamba_test", class_names=["tumor", "stroma"],
                     class_colors=[(200, 0, 0), (0, 150, 0)], tile_size=64,
                     mpp=2.0, mean=cfg["mean"], std=cfg["std"], untrained=True)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_checkpoint(model, card, path)
    return path


@pytest.fixture(scope="module")
def client():
    """Two local workers, as threads of the test process."""
    with batch.dask_client(n_workers=2, device="cpu", processes=False,
                           dashboard_address=None) as (client, info):
        assert info.workers == 2
        yield client


def write_tiled_tiff(path: Path, slides_dir: Path, mpp: float | None = 0.5, blank: bool = False
                     ) -> Path:
    """A 1024 x 768 px tiled TIFF at ``mpp``: tissue (a crop of CMU-1-Small-Region) or white."""
    import openslide
    import tifffile

    with openslide.OpenSlide(slides_dir / "CMU-1-Small-Region.svs") as source:
        rgb = np.asarray(source.read_region((600, 900), 0, (1024, 768)).convert("RGB"))
    if blank:
        rgb = np.full_like(rgb, 255)
    extra = {} if mpp is None else dict(resolution=(1e4 / mpp, 1e4 / mpp),
                                         resolutionunit="CENTIMETER")
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="jpeg", **extra)
    return path


def settings_for(checkpoint: Path, out_dir: Path, **kwargs) -> batch.PredictSettings:
    return batch.PredictSettings(checkpoint=checkpoint,
                                 model_card_sha256=batch.model_card_sha256(checkpoint),
                                 out_dir=out_dir, stride=64, **kwargs)


def test_find_slides_expands_folders(tmp_path):
    for name in ("b.svs", "a.ome.tif", "notes.txt", ".a.svs.123.part", "c.NDPI"):
        (tmp_path / name).touch()
    (tmp_path / "dicom").mkdir()
    for name in ("x_1.dcm", "x_0.dcm"):
        (tmp_path / "dicom" / name).touch()
    (tmp_path / "a.heatmap.tif").touch()  # our outputs, written beside the slides
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.heatmap.tif").touch()
    explicit = tmp_path / "explicit.raw"
    explicit.touch()

    found = batch.find_slides([tmp_path, explicit, tmp_path / "b.svs"])
    assert [p.name for p in found] == ["a.ome.tif", "b.svs", "c.NDPI", "explicit.raw"]

    found = batch.find_slides([tmp_path], recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.ome.tif", "b.svs", "c.NDPI", "dicom/x_0.dcm"]
    assert batch.find_slides([tmp_path], extensions=["svs"]) == [tmp_path / "b.svs"]


def test_plan_tasks_matches_rois_and_refuses_clashing_stems(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    rois = tmp_path / "rois"
    rois.mkdir()
    (rois / "a.geojson").touch()
    (rois / "b.svs.geojson").touch()
    one = tmp_path / "one"
    slides = [one / "a.ome.tif", one / "b.svs", one / "c.svs"]
    tasks = batch.plan_tasks(slides, rois)
    assert [(t.stem, t.roi_path) for t in tasks] == [
        ("a", rois / "a.geojson"), ("b", rois / "b.svs.geojson"), ("c", None)]
    with pytest.raises(ValueError, match="both write outputs named 'a'"):
        batch.plan_tasks([tmp_path / "one" / "a.svs", tmp_path / "two" / "a.tif"])


def test_predict_slides_runs_resumes_and_reports_failures(slides_dir, checkpoint, client, tmp_path,
                                                          monkeypatch):
    import napari_ssmamba.model
    from napari_ssmamba.export import output_paths

    loads = []

    def counting_load_checkpoint(path, device="cpu"):
        loads.append(threading.get_ident())
        return load_checkpoint(path, device=device)

    load_checkpoint = napari_ssmamba.model.load_checkpoint
    monkeypatch.setattr(napari_ssmamba.model, "load_checkpoint", counting_load_checkpoint)

    generated = write_tiled_tiff(tmp_path / "generated.tif", slides_dir)
    no_mpp = write_tiled_tiff(tmp_path / "no-mpp.tif", slides_dir, mpp=None)
    blank = write_tiled_tiff(tmp_path / "blank.tif", slides_dir, blank=True)
    slides = [slides_dir / "CMU-1-Small-Region.svs", slides_dir / "corrupt" / "unreadable.svs",
              generated, no_mpp, blank]
    tasks = batch.plan_tasks(slides)
    out = tmp_path / "out"
    settings = settings_for(checkpoint, out)
    run_events, slide_events = [], []

    outcomes = batch.predict_slides(
        tasks, settings, client, progress=lambda d, t, m: run_events.append((d, t)),
        slide_progress=lambda stem, d, t, m: slide_events.append((stem, d, t)))

    by_stem = {o.stem: o for o in outcomes}
    assert [o.stem for o in outcomes] == [
        "CMU-1-Small-Region", "unreadable", "generated", "no-mpp", "blank"]
    assert by_stem["CMU-1-Small-Region"].status == "ok"
    assert by_stem["generated"].status == "ok"
    assert by_stem["CMU-1-Small-Region"].tiles > 0 and by_stem["generated"].tiles > 0
    assert by_stem["generated"].top_class in ("tumor", "stroma")
    assert by_stem["unreadable"].status == "failed"
    assert "unreadable.svs" in by_stem["unreadable"].reason
    assert by_stem["no-mpp"].status == "failed"
    assert "mpp" in by_stem["no-mpp"].reason.lower()
    assert (by_stem["blank"].status, by_stem["blank"].reason) == ("failed", "no tissue found")
    assert run_events[-1] == (5, 5)
    assert {stem for stem, _, _ in slide_events} >= {"CMU-1-Small-Region", "generated"}
    last = [(d, t) for stem, d, t in slide_events if stem == "generated"][-1]
    assert last[0] == last[1] > 0
    # each of the two workers (threads of this process) loaded the model once for its slides
    assert len(loads) == len(set(loads)) <= 2

    # a killed run: one slide without its run record and with a temporary file left behind
    paths = output_paths(out, "generated")
    csv_before = paths["tiles"].read_text()
    paths["run"].unlink()
    stale = out / f".{paths['tiles'].name}.x1y2.part"
    stale.write_text("half")
    outcomes = batch.predict_slides(tasks, settings, client)
    by_stem = {o.stem: o for o in outcomes}
    assert by_stem["CMU-1-Small-Region"].status == "skipped"
    assert by_stem["CMU-1-Small-Region"].tiles > 0
    assert by_stem["generated"].status == "ok"
    assert by_stem["unreadable"].status == "failed"
    assert (by_stem["blank"].status, by_stem["blank"].seconds) == ("failed", 0.0)  # not re-run
    assert paths["tiles"].read_text() == csv_before
    assert not stale.exists()

    batch.write_summary(outcomes, out / "summary.csv")
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["skipped", "failed", "ok", "failed", "failed"]
    assert list(rows[0]) == list(batch.SUMMARY_COLUMNS)

    # the same folder with another stride: the complete slide is made again, and said so
    wider = batch.PredictSettings(**{**vars(settings), "stride": 128})
    [again] = batch.predict_slides(tasks[:1], wider, client)
    assert (again.status, again.reason) == ("ok", "replaces outputs made with another stride")
    batch.write_summary([again], out / "summary.csv")  # the other slides' rows stay
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stem"] for r in rows] == [o.stem for o in outcomes]
    assert rows[0]["reason"] == "replaces outputs made with another stride"


def test_a_slide_whose_rois_lie_outside_it_says_so(tmp_path):
    task = batch.SlideTask(tmp_path / "a.svs", "a", tmp_path / "a.geojson")
    rois = [{"verdict": "outside the slide"}, {"verdict": "outside the slide"}]
    record = {"summary": {"tiles": 0, "background_tiles": 0, "rois": rois}}
    outcome = batch.outcome_from_record(task, "ok", record)
    assert outcome.status == "failed"
    assert outcome.reason == "the ROIs of a.geojson lie outside the slide"
    rois[0]["verdict"] = "no tissue"
    assert batch.outcome_from_record(task, "ok", record).reason == (
        "no tissue found in the ROIs of a.geojson (1 of 2 lie outside the slide)"
    )


def test_outputs_made_otherwise_are_named(tmp_path, checkpoint):
    settings = settings_for(checkpoint, tmp_path)
    roi = tmp_path / "a.geojson"
    record = {
        "model": {"card_sha256": settings.model_card_sha256},
        "parameters": {"stride_model_px": 64, "tile_size": 64},
        "run_info": {"roi_file": str(roi)},
    }
    task = batch.SlideTask(tmp_path / "a.svs", "a", roi)
    assert batch.made_otherwise(record, task, settings) == ""
    assert batch.made_otherwise(record, batch.SlideTask(task.slide_path, "a"), settings) == (
        "another ROI file"
    )
    # a slide without a pixel size of its own took the last run's --mpp
    record["slide"] = {"mpp_yx": [2.0, 2.0]}
    record["run_info"]["mpp_if_missing"] = [2.0, 2.0]
    again = batch.PredictSettings(**{**vars(settings), "mpp": (2.0, 2.0)})
    assert batch.made_otherwise(record, task, again) == ""
    assert batch.made_otherwise(record, task, settings) == "another --mpp"
    record["model"]["card_sha256"] = "0" * 64
    assert batch.made_otherwise(record, task, settings) == "another model"


def test_predict_slides_cancel_stops_the_running_slide(slides_dir, checkpoint, client, tmp_path):
    from napari_ssmamba.export import outputs_complete

    tasks = batch.plan_tasks([slides_dir / "CMU-1-Small-Region.svs"])
    settings = settings_for(checkpoint, tmp_path, batch_size=2)
    settings = batch.PredictSettings(**{**vars(settings), "stride": None})
    cancel = threading.Event()
    start = time.perf_counter()
    with pytest.raises(CancelledError):
        batch.predict_slides(tasks, settings, client, cancel=cancel,
                             slide_progress=lambda stem, d, t, m: cancel.set())
    # the worker stops the slide at its next batch instead of finishing it
    while any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
        assert time.perf_counter() - start < 20
        time.sleep(0.1)
    assert not outputs_complete(tmp_path, "CMU-1-Small-Region")


def test_run_record(tmp_path):
    outcome = batch.SlideOutcome("a.svs", "a", "ok", tiles=3, top_class="tumor", seconds=1.5)
    record = batch.RunRecord({"out": str(tmp_path)}, "model.safetensors", "c" * 64,
                             cluster={"workers": 2})
    record.finished = batch.utc_now()
    record.outcomes = [vars(outcome)]
    path = record.write(tmp_path)
    assert path.name.startswith("predict-") and path.name.endswith("Z.json")
    data = json.loads(path.read_text())
    assert data["counts"] == {"ok": 1, "skipped": 0, "failed": 0}
    assert data["model_card_sha256"] == "c" * 64
    assert data["versions"]["dask"] and data["versions"]["torch"]
    assert data["slides"][0]["top_class"] == "tumor"


def test_a_slide_whose_worker_died_is_reported(tmp_path):
    from distributed import KilledWorker

    class DeadFuture:
        status = "error"

        def exception(self):
            return KilledWorker("predict-a-1234", "tcp://127.0.0.1:1234", 3)

    outcome = batch._future_outcome(DeadFuture(), batch.SlideTask(tmp_path / "a.svs", "a"))
    assert (outcome.status, outcome.stem) == ("failed", "a")
    assert "worker died" in outcome.reason
