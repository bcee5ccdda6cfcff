"""Batch prediction over many slides on dask.distributed: one task per slide, resumable.

The client expands the inputs to slide files, skips the slides whose outputs are already complete,
and submits one task per remaining slide. A task runs :func:`run_slide`, the pipeline of
``ssmamba classify``, so a slide's outputs are the same whichever command wrote them. Each worker
loads the model once and keeps it (:func:`cached_model`). A slide that fails is reported with its
reason and the others go on. The exporters write atomically and the run record last, so what a
killed task leaves behind never looks complete and a re-run picks the slide up again.

Per-slide progress travels from the workers to the client as dask events (``Worker.log_event``
on a topic of the run, ``Client.subscribe_topic`` on the client).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import importlib.util
import json
import logging
import os
import platform
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_ssmamba._atomic import atomic_open
from napari_ssmamba._provenance import package_versions
from napari_ssmamba.errors import CancelledError, SSMambaError
from napari_ssmamba.export.paths import slide_stem
from napari_ssmamba.progress import ProgressCallback, raise_if_cancelled
from napari_ssmamba.slide import SLIDE_SUFFIXES

log = logging.getLogger(__name__)

#: names tried in ``--roi-dir`` for a slide, in order
ROI_NAME_PATTERNS = ("{stem}.geojson", "{name}.geojson", "{stem}.json")
SUMMARY_NAME = "summary.csv"
#: seconds between two progress events of one slide
SLIDE_PROGRESS_INTERVAL = 0.5

SlideProgressCallback = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class SlideTask:
    """One slide to predict: its file, the stem its outputs are named after, its ROI file."""

    slide_path: Path
    stem: str
    roi_path: Path | None = None


@dataclass(frozen=True)
class PredictSettings:
    """What every slide of a run shares; travels to the workers with each task."""

    checkpoint: Path
    model_card_sha256: str
    out_dir: Path
    mpp: tuple[float, float] | None = None
    device: str = "auto"
    stride: int | None = None
    batch_size: int | None = None
    torch_threads: int | None = None


@dataclass
class SlideOutcome:
    """One row of the run summary."""

    slide: str
    stem: str
    status: str  # "ok", "skipped" (outputs already complete) or "failed"
    reason: str = ""
    tiles: int | None = None
    top_class: str = ""
    rois: str = ""
    seconds: float = 0.0


# --- finding slides ------------------------------------------------------------------------------


def find_slides(
    inputs: Iterable[str | os.PathLike],
    extensions: Sequence[str] = SLIDE_SUFFIXES,
    recursive: bool = False,
) -> list[Path]:
    """Expand files and folders to slide files, in order, without duplicates.

    A file named on its own is taken whatever its extension. A folder gives its files whose name
    ends with one of ``extensions`` (case-insensitive; hidden files and the heatmaps this package
    writes, ``*.heatmap.tif``, left out), its subfolders too when ``recursive``. The ``.dcm`` files
    of one folder are one DICOM slide, opened through the first of them.
    """
    from napari_ssmamba.export.paths import OUTPUT_SUFFIXES

    suffixes = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    slides: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            slides.append(path)

    for item in map(Path, inputs):
        if not item.is_dir():
            add(item)
            continue
        candidates = sorted(item.rglob("*") if recursive else item.iterdir())
        dicom_folders: set[Path] = set()
        for path in candidates:
            name = path.name.lower()
            if name.startswith(".") or not path.is_file() or not name.endswith(suffixes):
                continue
            if name.endswith(OUTPUT_SUFFIXES["heatmap"]):
                continue
            if name.endswith(".dcm"):
                if path.parent in dicom_folders:
                    continue
                dicom_folders.add(path.parent)
            add(path)
    return slides


def match_roi_file(slide_path: Path, stem: str, roi_dir: Path | None) -> Path | None:
    """The ROI GeoJSON for a slide in ``roi_dir``: ``<stem>.geojson``, ``<file name>.geojson``
    or ``<stem>.json``; None when there is none (the slide's whole tissue is classified)."""
    if roi_dir is None:
        return None
    for pattern in ROI_NAME_PATTERNS:
        candidate = roi_dir / pattern.format(stem=stem, name=slide_path.name)
        if candidate.is_file():
            return candidate
    return None


def plan_tasks(slides: Sequence[Path], roi_dir: Path | None = None) -> list[SlideTask]:
    """One task per slide, with its output stem and ROI file.

    Raises ValueError when two slides would write outputs of the same name.
    """
    tasks: list[SlideTask] = []
    by_stem: dict[str, Path] = {}
    roi_dir = None if roi_dir is None else Path(roi_dir).absolute()
    for path in map(Path, slides):
        path = path.absolute()  # workers may run elsewhere than the client's working folder
        stem = slide_stem(path)  # the name ssmamba classify writes its outputs under
        if stem in by_stem:
            raise ValueError(
                f"{by_stem[stem]} and {path} would both write outputs named {stem!r}; rename one "
                "of them or predict them into different --out folders"
            )
        by_stem[stem] = path
        tasks.append(SlideTask(path, stem, match_roi_file(path, stem, roi_dir)))
    return tasks


# --- on the workers ------------------------------------------------------------------------------

#: the model loaded on this thread (each worker of ``ssmamba predict`` runs one thread)
_thread_models = threading.local()


def cached_model(checkpoint: str | os.PathLike, model_card_sha256: str, device: str):
    """``(model, card)`` of a checkpoint, loaded once per worker thread and kept.

    A worker of ``ssmamba predict`` runs one thread, so it loads the model once. The key holds
    the hash of the model card, which holds the weights' hash, so a checkpoint rewritten in place
    is loaded again; only the latest model is kept.
    """
    from napari_ssmamba.model import load_checkpoint

    key = (str(checkpoint), model_card_sha256, device)
    cached = getattr(_thread_models, "entry", None)
    if cached is None or cached[0] != key:
        log.info("loading %s (card sha256 %s) on %s", checkpoint, model_card_sha256[:12], device)
        _thread_models.entry = None  # free the previous model before loading the next
        model, card = load_checkpoint(str(checkpoint), device=device)
        _thread_models.entry = cached = (key, (model.eval(), card))
    return cached[1]


def worker_device(device: str) -> str:
    """The device a task uses on its worker, ``"auto"`` resolved.

    Under dask-cuda each worker sees one GPU. Without it, a plain local cluster on a machine with
    several GPUs gives worker ``i`` the GPU ``i % count``.
    """
    import torch

    from napari_ssmamba.inference.predict import resolve_device

    resolved = resolve_device(device)
    count = torch.cuda.device_count() if resolved.type == "cuda" else 0
    if count < 2 or resolved.index is not None:
        return str(resolved)
    from distributed import get_worker

    try:
        name = get_worker().name
    except ValueError:  # not on a worker
        return str(resolved)
    return f"cuda:{int(name) % count}" if str(name).isdigit() else str(resolved)


def remove_stale_parts(out_dir: Path, stem: str) -> None:
    """Delete the temporary ``.part`` files a killed run left beside a slide's outputs."""
    from napari_ssmamba.export import output_paths

    for path in output_paths(out_dir, stem).values():
        for part in out_dir.glob(f".{glob.escape(path.name)}.*.part"):
            part.unlink(missing_ok=True)


def _event_progress(topic: str | None, stem: str) -> ProgressCallback | None:
    """A progress callback that sends ``(stem, done, total, message)`` to the client, throttled."""
    if topic is None:
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    last = 0.0

    def progress(done: int, total: int, message: str = "") -> None:
        nonlocal last
        now = time.monotonic()
        if done < total and now - last < SLIDE_PROGRESS_INTERVAL:
            return
        last = now
        worker.log_event(topic, {"stem": stem, "done": int(done), "total": int(total),
                                 "message": str(message)})

    return progress


def predict_slide_task(task: SlideTask, settings: PredictSettings, topic: str | None = None,
                       stop_name: str | None = None) -> SlideOutcome:
    """Run one slide on a worker; a failure comes back as an outcome with its reason.

    ``topic`` names the event topic that carries the slide's progress to the client;
    ``stop_name`` a ``distributed.Event`` that, once set, cancels the slide at its next batch.
    """
    from distributed import Event
    from napari_ssmamba.inference import run_slide

    start = time.perf_counter()
    rois = task.roi_path.name if task.roi_path else "whole tissue"
    try:
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        device = worker_device(settings.device)
        remove_stale_parts(settings.out_dir, task.stem)
        model, card = cached_model(settings.checkpoint, settings.model_card_sha256, device)
        record = run_slide(
            task.slide_path, model, card, settings.out_dir, rois=task.roi_path, mpp=settings.mpp,
            device=device, stride=settings.stride, batch_size=settings.batch_size,
            progress=_event_progress(topic, task.stem),
            run_info={"command": "ssmamba predict", "model_path": str(settings.checkpoint)},
            cancel=Event(stop_name) if stop_name else None,
        )
    except CancelledError:
        raise
    except Exception as exc:  # one bad slide must not stop the run: report it
        log.debug("slide %s failed:\n%s", task.slide_path, traceback.format_exc())
        return SlideOutcome(str(task.slide_path), task.stem, "failed", reason=describe_error(exc),
                            rois=rois, seconds=time.perf_counter() - start)
    return outcome_from_record(task, "ok", record, seconds=time.perf_counter() - start)


def describe_error(exc: BaseException) -> str:
    """A one-line reason for the summary: our errors as they are, others with their type."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, SSMambaError) and text else f"{type(exc).__name__}: {text}"


# --- on the client -------------------------------------------------------------------------------


def model_card_sha256(checkpoint: str | os.PathLike) -> str:
    """The sha256 of a checkpoint's model card (which holds the weights' sha256), read without
    loading the weights: the key of the workers' model cache and the model's identity in records."""
    from napari_ssmamba.export.record import card_sha256
    from napari_ssmamba.model import read_card

    return card_sha256(read_card(checkpoint))


def top_classes(record: dict) -> str:
    """The class of the slide (whole tissue), or of each ROI (``name=class; ...``), in a record."""
    from napari_ssmamba.export import record_summary

    if record.get("parameters", {}).get("rois") == "whole tissue":
        return record_summary(record)["top_class"] or ""
    rois = record.get("summary", {}).get("rois", [])
    return "; ".join(f"{roi.get('name') or i + 1}={roi.get('class') or '-'}"
                     for i, roi in enumerate(rois))


def outcome_from_record(task: SlideTask, status: str, record: dict, seconds: float = 0.0
                        ) -> SlideOutcome:
    """A summary row from a slide's run record; a slide without tissue tiles counts as failed."""
    from napari_ssmamba.export import record_summary

    tiles = record_summary(record)["tiles"]
    reason = "outputs complete" if status == "skipped" else ""
    if not tiles:
        status = "failed"
        reason = "no tissue found" + (f" in the ROIs of {task.roi_path.name}" if task.roi_path
                                      else "")
        verdicts = [roi.get("verdict") for roi in record.get("summary", {}).get("rois", [])]
        outside = verdicts.count("outside the slide")
        if task.roi_path and outside == len(verdicts):
            reason = f"the ROIs of {task.roi_path.name} lie outside the slide"
        elif outside:
            reason += f" ({outside} of {len(verdicts)} lie outside the slide)"
    return SlideOutcome(
        str(task.slide_path), task.stem, status, reason=reason, tiles=tiles,
        top_class=top_classes(record),
        rois=task.roi_path.name if task.roi_path else "whole tissue", seconds=seconds,
    )


def _run_record(task: SlideTask, out_dir: Path) -> dict:
    from napari_ssmamba.export import output_paths

    return json.loads(output_paths(out_dir, task.stem)["run"].read_text(encoding="utf-8"))


def made_otherwise(record: dict, task: SlideTask, settings: PredictSettings) -> str:
    """Why a slide's complete outputs are not what this run would write (another model, stride,
    ROI file, or ``--mpp`` for a slide without a pixel size), or "" when they are."""
    parameters, run_info = record.get("parameters", {}), record.get("run_info", {})
    if record.get("model", {}).get("card_sha256") != settings.model_card_sha256:
        return "another model"
    if parameters.get("stride_model_px") != (settings.stride or parameters.get("tile_size")):
        return "another stride"
    roi_file = run_info.get("roi_file")
    if (roi_file and Path(roi_file).absolute()) != (task.roi_path and task.roi_path.absolute()):
        return "another ROI file"
    given = run_info.get("mpp_if_missing")
    given = list(given) if isinstance(given, (list, tuple)) else [given, given]
    if given == record.get("slide", {}).get("mpp_yx") and given != _as_pair(settings.mpp):
        return "another --mpp"  # the slide has no pixel size of its own: the last --mpp gave it
    return ""


def _as_pair(mpp) -> list | None:
    if mpp is None:
        return None
    return [float(v) for v in (mpp if isinstance(mpp, (list, tuple)) else (mpp, mpp))]


def predict_slides(
    tasks: Sequence[SlideTask],
    settings: PredictSettings,
    client,
    progress: ProgressCallback | None = None,
    slide_progress: SlideProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> list[SlideOutcome]:
    """Predict every slide of ``tasks`` on the dask ``client``'s cluster; outcomes in task order.

    Slides whose outputs in ``settings.out_dir`` are complete are skipped, unless another model,
    stride or ROI file made them: those are made again (the summary says so). ``progress(done,
    total, stem)`` follows the slides, ``slide_progress(stem, done, total, message)`` the tiles of
    each running slide (sent by the workers). ``cancel`` cancels the remaining slides and raises
    ``CancelledError``; finished slides stay complete, the others look unfinished.
    """
    from distributed import as_completed
    from napari_ssmamba.export import outputs_complete

    settings.out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, SlideOutcome] = {}
    to_run: list[SlideTask] = []
    redone: dict[str, str] = {}  # stem -> why its complete outputs are made again
    for task in tasks:
        if outputs_complete(settings.out_dir, task.stem):
            record = _run_record(task, settings.out_dir)
            why = made_otherwise(record, task, settings)
            if not why:
                outcomes[task.stem] = outcome_from_record(task, "skipped", record)
                continue
            redone[task.stem] = f"replaces outputs made with {why}"
        to_run.append(task)
    total, done = len(tasks), len(outcomes)
    if progress:
        progress(done, total, f"{done} slides already complete" if done else "")
    if not to_run:
        return [outcomes[task.stem] for task in tasks]

    raise_if_cancelled(cancel, "batch prediction")
    run_id = uuid.uuid4().hex[:8]
    topic = f"ssmamba-predict-{run_id}" if slide_progress else None
    if topic:
        client.subscribe_topic(topic, lambda event: slide_progress(
            event[1]["stem"], event[1]["done"], event[1]["total"], event[1]["message"]))
    stop_name = f"ssmamba-predict-{run_id}-cancel" if cancel is not None else None
    futures = {
        client.submit(predict_slide_task, task, settings, topic, stop_name,
                      key=f"predict-{task.stem}-{run_id}", pure=False, retries=0): task
        for task in to_run
    }
    pending = as_completed(futures)
    try:
        while not pending.is_empty():
            finished = pending.next_batch(block=False)
            if not finished:
                if cancel is not None and cancel.is_set():
                    _stop_running(client, futures, stop_name)
                    raise CancelledError("batch prediction cancelled by the user")
                time.sleep(0.1)
                continue
            for future in finished:
                task = futures[future]
                outcome = _future_outcome(future, task)
                if task.stem in redone and outcome.status == "ok":
                    outcome.reason = redone[task.stem]
                outcomes[task.stem] = outcome
                done += 1
                if progress:
                    progress(done, total, task.stem)
    finally:
        unfinished = [f for f in futures if not f.done()]
        if unfinished:
            client.cancel(unfinished)
        if topic:
            client.unsubscribe_topic(topic)
    return [outcomes[task.stem] for task in tasks]


def _stop_running(client, futures, stop_name: str) -> None:
    """Drop the queued slides and have the running ones stop at their next batch."""
    from distributed import Event

    Event(stop_name, client=client).set()
    client.cancel(list(futures))


def _future_outcome(future, task: SlideTask) -> SlideOutcome:
    if future.status == "finished":
        return future.result()
    exc = future.exception()
    if type(exc).__name__ == "KilledWorker":
        reason = "its worker died while predicting it (a crash or out of memory)"
    elif isinstance(exc, CancelledError) or type(exc).__name__ == "CancelledError":
        raise CancelledError("batch prediction cancelled")
    else:
        reason = describe_error(exc)
    return SlideOutcome(str(task.slide_path), task.stem, "failed", reason=reason,
                        rois=task.roi_path.name if task.roi_path else "whole tissue")


# --- the cluster ---------------------------------------------------------------------------------


@dataclass
class ClusterInfo:
    """How a run is executed: where the scheduler is, how many workers, torch threads each."""

    kind: str  # "LocalCUDACluster", "LocalCluster" or "scheduler"
    scheduler: str
    dashboard: str | None
    workers: int
    torch_threads: int | None = None
    gpus: int = 0


def _cuda_device_count(device: str) -> int:
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    n_workers: int | None = None,
    device: str = "auto",
    processes: bool = True,
    dashboard_address: str | None = ":8787",
) -> Iterator[tuple[Any, ClusterInfo]]:
    """A dask ``Client`` and how it runs: on ``scheduler`` or on a local cluster started here.

    Locally, with GPUs: one worker per GPU (dask-cuda's ``LocalCUDACluster`` where importable,
    else a ``LocalCluster`` whose worker ``i`` takes GPU ``i``). Without: ``n_workers`` CPU workers
    (default one per four cores), each running one slide at a time with its share of the cores
    as torch threads. ``processes=False`` runs the workers as threads of this process, which
    keeps its torch threads (they are shared by the whole process).
    """
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
            yield client, ClusterInfo("scheduler", scheduler, client.dashboard_link, workers)
        return

    gpus = _cuda_device_count(device)
    cores = os.cpu_count() or 1
    if gpus:
        n = min(n_workers or gpus, gpus)
        torch_threads = max(1, cores // n) if processes else None
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                                   dashboard_address=dashboard_address)
        else:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            devices = visible.split(",")[:n] if visible else list(range(n))
            cluster = LocalCUDACluster(CUDA_VISIBLE_DEVICES=devices, threads_per_worker=1,
                                       dashboard_address=dashboard_address)
    else:
        n = n_workers or max(1, cores // 4)
        torch_threads = max(1, cores // n) if processes else None
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                               dashboard_address=dashboard_address)
    with cluster, Client(cluster) as client:
        serves_dashboard = dashboard_address is not None and importlib.util.find_spec("bokeh")
        dashboard = client.dashboard_link if serves_dashboard else None
        yield client, ClusterInfo(type(cluster).__name__, cluster.scheduler_address, dashboard, n,
                                  torch_threads, gpus)


# --- summary and run record ----------------------------------------------------------------------

SUMMARY_COLUMNS = tuple(f.name for f in fields(SlideOutcome))


def write_summary(outcomes: Sequence[SlideOutcome], path: str | os.PathLike) -> None:
    """The summary CSV, one row per slide (atomic). Rows an earlier run wrote to ``path`` for
    slides this run did not have stay, in their place; this run's replace theirs or follow."""
    rows = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = {row["stem"]: row for row in csv.DictReader(fh) if row.get("stem")}
    except (OSError, csv.Error, KeyError):
        pass
    for outcome in outcomes:
        rows[outcome.stem] = asdict(outcome) | {"seconds": f"{outcome.seconds:.2f}"}
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows.values())


@dataclass
class RunRecord:
    """What a batch run did, wsinfer style: written as JSON into the output folder."""

    arguments: dict[str, Any]
    checkpoint: str
    model_card_sha256: str
    cluster: dict[str, Any] = field(default_factory=dict)
    started: str = field(default_factory=lambda: utc_now())
    finished: str | None = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def write(self, out_dir: Path) -> Path:
        """Write ``predict-<started>.json`` in ``out_dir`` (atomic); returns its path."""
        stamp = datetime.fromisoformat(self.started).strftime("%Y%m%dT%H%M%SZ")
        path = out_dir / f"predict-{stamp}.json"
        counts = {status: sum(o["status"] == status for o in self.outcomes)
                  for status in ("ok", "skipped", "failed")}
        data = {
            "command": "ssmamba predict",
            "argv": sys.argv,
            "arguments": self.arguments,
            "started": self.started,
            "finished": self.finished,
            "host": platform.node(),
            "versions": package_versions(),
            "checkpoint": self.checkpoint,
            "model_card_sha256": self.model_card_sha256,
            "cluster": self.cluster,
            "counts": counts,
            "slides": self.outcomes,
        }
        with atomic_open(path, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
        return path


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
