"""``ssmamba predict``: classify many slides on a dask cluster, resumably.

Per slide the same outputs as ``ssmamba classify``; a summary of all slides at the end.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

import click

from napari_ssmamba.cli import errors_as_messages, load_model
from napari_ssmamba.cli.classify import MppType
from napari_ssmamba.slide import SLIDE_SUFFIXES


@click.command()
@click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path),
    metavar="SLIDES_OR_FOLDERS...",
)
@click.option(
    "--model", "checkpoint", type=click.Path(exists=True, path_type=Path), default=None,
    help="Checkpoint: model.safetensors or its folder. Default: the bundled model.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: per slide <stem>.geojson, .heatmap.tif, .png, .tiles.csv, .run.json; "
    "summary.csv and a predict-<time>.json record of the run.",
)
@click.option(
    "--roi-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
    help="Folder of ROI GeoJSON files named after the slides (<stem>.geojson); slides without "
    "one are classified over their whole tissue.",
)
@click.option(
    "--mpp", type=MppType(), default=None,
    help="µm per pixel of level 0 for slides that do not record it: one number, or Y,X.",
)
@click.option(
    "--scheduler", metavar="ADDRESS", default=None,
    help="Address of a running dask scheduler (tcp://host:8786) to run on; default: a local "
    "cluster.",
)
@click.option(
    "--workers", "n_workers", type=click.IntRange(min=1), default=None,
    help="Workers of the local cluster. Default: one per GPU, else one per four CPU cores.",
)
@click.option(
    "--worker-threads", is_flag=True,
    help="Run the local workers as threads of this process instead of processes.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--stride-px", "stride", type=click.IntRange(min=1), default=None,
    help="Tile stride in model-input pixels. Default: the tile size (no overlap).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None,
    help="Tiles per model batch. Default: chosen for the device.",
)
@click.option(
    "--extensions", default=None, metavar="EXT,EXT...",
    help=f"Slide file extensions taken from folders. Default: {','.join(SLIDE_SUFFIXES)}.",
)
@click.option("--recursive", is_flag=True, help="Look for slides in subfolders too.")
def predict(
    inputs: tuple[Path, ...],
    checkpoint: Path | None,
    out_dir: Path,
    roi_dir: Path | None,
    mpp: tuple[float, float] | None,
    scheduler: str | None,
    n_workers: int | None,
    worker_threads: bool,
    device: str,
    stride: int | None,
    batch_size: int | None,
    extensions: str | None,
    recursive: bool,
) -> None:
    """Classify every slide of SLIDES_OR_FOLDERS into --out, one dask task per slide.

    Slides whose outputs are already complete are skipped, so running the same command again
    resumes an interrupted run. The exit status is 1 when any slide failed.
    """
    from rich.console import Console

    import distributed  # configures its loggers on import, so import it before setting them
    from napari_ssmamba.export import prepared_output_dir
    from napari_ssmamba.inference import batch
    from napari_ssmamba.inference.predict import resolve_device

    if scheduler is not None and (n_workers is not None or worker_threads):
        raise click.UsageError("--workers and --worker-threads apply to the local cluster, "
                               "not to one given with --scheduler")
    # dask's loggers follow ``ssmamba --log-level`` instead of printing INFO lines
    logging.getLogger(distributed.__name__).setLevel(logging.getLogger().getEffectiveLevel())
    console = Console(stderr=True)
    arguments = {
        "inputs": [str(p) for p in inputs], "model": str(checkpoint) if checkpoint else None,
        "out": str(out_dir), "roi_dir": str(roi_dir) if roi_dir else None,
        "mpp": list(mpp) if mpp else None,
        "scheduler": scheduler, "workers": n_workers, "worker_threads": worker_threads,
        "device": device, "stride_px": stride, "batch_size": batch_size,
        "extensions": extensions, "recursive": recursive,
    }
    suffixes = SLIDE_SUFFIXES if extensions is None else tuple(
        e.strip() for e in extensions.split(",") if e.strip())
    slides = batch.find_slides(inputs, suffixes, recursive=recursive)
    if not slides:
        raise click.UsageError(f"no slides ({', '.join(suffixes)}) found in "
                               f"{', '.join(map(str, inputs))}")
    try:
        tasks = batch.plan_tasks(slides, roi_dir)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    checkpoint = _check_checkpoint(checkpoint)
    if scheduler is None:  # the local cluster's workers use this machine's devices
        with errors_as_messages():
            resolve_device(device)
    record = batch.RunRecord(arguments, str(checkpoint.resolve()),
                             batch.model_card_sha256(checkpoint))

    with contextlib.ExitStack() as stack:
        with errors_as_messages():  # the folder is removed again if the run fails before writing
            stack.enter_context(prepared_output_dir(out_dir))
        try:
            client, info = stack.enter_context(batch.dask_client(
                scheduler, n_workers, device, processes=not worker_threads))
        except OSError as exc:
            raise click.ClickException(f"cannot start or reach the dask cluster: {exc}") from exc
        if info.dashboard:
            console.print(f"dask dashboard: [link={info.dashboard}]{info.dashboard}[/link]")
        elif scheduler is None:
            console.print("[dim]the dask dashboard needs bokeh: pip install "
                          "'napari-ssmamba[distributed]'[/]")
        console.print(f"{len(tasks)} slides on {info.workers} worker(s) ({info.kind} "
                      f"{info.scheduler}); outputs in {out_dir}")
        record.cluster = vars(info)
        settings = batch.PredictSettings(
            checkpoint=checkpoint.resolve(), model_card_sha256=record.model_card_sha256,
            out_dir=out_dir.resolve(), mpp=mpp, device=device, stride=stride,
            batch_size=batch_size, torch_threads=info.torch_threads,
        )
        try:
            outcomes = _run_with_progress(console, batch, tasks, settings, client)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished slides are complete; run the same "
                          "command again to resume")
            sys.exit(130)
    record.finished = batch.utc_now()
    record.outcomes = [vars(o) for o in outcomes]
    batch.write_summary(outcomes, out_dir / batch.SUMMARY_NAME)
    record_path = record.write(out_dir)
    _print_summary(outcomes)
    console.print(f"summary: {out_dir / batch.SUMMARY_NAME}; run record: {record_path}")
    if any(o.status == "failed" for o in outcomes):
        sys.exit(1)


def _check_checkpoint(checkpoint: Path | None) -> Path:
    """The checkpoint to use (default: the bundled one), loaded once here so that a bad one fails
    before any slide; a warning when it is untrained."""
    with errors_as_messages():
        return load_model(checkpoint)[0]


def _run_with_progress(console, batch, tasks, settings, client):
    """Drive ``batch.predict_slides`` with a rich bar for the run and one per running slide."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        run_bar = bars.add_task("slides", total=len(tasks))
        slide_bars: dict[str, int] = {}
        finished: set[str] = set()
        started = time.monotonic()

        def on_run(done: int, total: int, stem: str) -> None:
            bars.update(run_bar, completed=done, total=total)
            finished.add(stem)
            if stem in slide_bars:
                bars.remove_task(slide_bars.pop(stem))

        def on_slide(stem: str, done: int, total: int, message: str) -> None:
            if stem in finished:  # a late event of a slide already done
                return
            if stem not in slide_bars:
                slide_bars[stem] = bars.add_task(f"  {stem}", total=total)
            bars.update(slide_bars[stem], completed=done, total=total)

        outcomes = batch.predict_slides(tasks, settings, client, progress=on_run,
                                        slide_progress=on_slide)
        for bar in slide_bars.values():
            bars.remove_task(bar)
        bars.update(run_bar, description=f"slides ({time.monotonic() - started:.0f} s)")
    return outcomes


def _print_summary(outcomes) -> None:
    from rich.console import Console
    from rich.table import Table

    styles = {"ok": "green", "skipped": "cyan", "failed": "red"}
    table = Table(title="ssmamba predict")
    for column in ("slide", "status", "tiles", "top class", "ROIs", "seconds", "reason"):
        table.add_column(column, justify="right" if column in ("tiles", "seconds") else "left",
                         overflow="fold")
    for o in outcomes:
        table.add_row(o.stem, f"[{styles[o.status]}]{o.status}[/]",
                      "" if o.tiles is None else str(o.tiles), o.top_class, o.rois,
                      f"{o.seconds:.1f}", o.reason)
    Console().print(table)
