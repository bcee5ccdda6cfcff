"""``ssmamba classify``: classify the ROIs (or the whole tissue) of one slide and write the exports."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from napari_ssmamba.inference.jpeg_batches import DECODERS
from napari_ssmamba.slide.properties import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP


class MppType(click.ParamType):
    """µm per pixel: one number (square pixels) or ``Y,X``, each a plausible slide MPP
    (``napari_ssmamba.slide.properties``)."""

    name = "MPP"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parts = [float(v) for v in str(value).replace(" ", "").split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a number or a pair Y,X of numbers", param, ctx)
        if len(parts) == 1:
            parts = parts * 2
        low, high = MIN_PLAUSIBLE_MPP, MAX_PLAUSIBLE_MPP
        if len(parts) != 2 or not all(low <= part <= high for part in parts):  # NaN fails too
            self.fail(
                f"{value!r}: give µm per pixel from {low:g} to {high:g}, one number or Y,X "
                "(whole-slide scans are 0.1-1 µm/px)",
                param,
                ctx,
            )
        return tuple(parts)


@click.command()
@click.argument("slide", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--roi",
    "roi_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="QuPath GeoJSON of the ROIs to classify. Default: the whole tissue.",
)
@click.option(
    "--model",
    "checkpoint",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Checkpoint: model.safetensors or its folder. Default: the bundled model.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: <stem>.geojson, .heatmap.tif, .png, .tiles.csv and .run.json.",
)
@click.option(
    "--mpp",
    type=MppType(),
    default=None,
    help="µm per pixel of level 0 when the slide does not record it: one number, or Y,X.",
)
@click.option(
    "--stride-px",
    "stride",
    type=click.IntRange(min=1),
    default=None,
    help="Tile stride in model-input pixels. Default: the tile size (no overlap).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Tiles per model batch. Default: chosen for the device (halved on GPU out-of-memory).",
)
@click.option(
    "--decoder",
    type=click.Choice(list(DECODERS)),
    default="auto",
    show_default=True,
    help="Who decodes the slide's JPEG tiles: auto (on CUDA nvJPEG where it gives the CPU's "
    "pixels, else libjpeg in batches; on the CPU box by box), cpu (box by box), or nvjpeg or "
    "libjpeg (fail if it cannot be used).",
)
def classify(
    slide: Path,
    roi_path: Path | None,
    checkpoint: Path | None,
    out_dir: Path,
    mpp: tuple[float, float] | None,
    stride: int | None,
    device: str,
    batch_size: int | None,
    decoder: str,
) -> None:
    """Classify the ROIs of SLIDE (or its whole tissue) and write the exports to --out."""
    record = run_classify(
        slide,
        out_dir,
        roi_path=roi_path,
        checkpoint=checkpoint,
        mpp=mpp,
        stride=stride,
        device=device,
        batch_size=batch_size,
        decoder=decoder,
    )
    print_record(record, out_dir)


def run_classify(
    slide,
    out_dir,
    roi_path=None,
    checkpoint=None,
    mpp=None,
    stride=None,
    device="auto",
    batch_size=None,
    decoder="auto",
    command="ssmamba classify",
) -> dict:
    """Load the model, run the pipeline with a progress bar; our errors become ClickExceptions."""
    from rich.progress import Progress

    from napari_ssmamba.cli import errors_as_messages, load_model, warnings_shown_on
    from napari_ssmamba.export import prepared_output_dir
    from napari_ssmamba.inference import run_slide

    try:
        # the folder is removed again if the run fails before writing
        with errors_as_messages(), prepared_output_dir(out_dir):
            checkpoint, model, card = load_model(checkpoint)
            with Progress(transient=True) as bar, warnings_shown_on(bar.console):
                task = bar.add_task("classifying", total=None)

                def progress(done: int, total: int, message: str = "") -> None:
                    bar.update(
                        task, completed=done, total=total, description=message or "classifying"
                    )

                return run_slide(
                    slide,
                    model,
                    card,
                    out_dir,
                    rois=roi_path,
                    mpp=mpp,
                    device=device,
                    stride=stride,
                    batch_size=batch_size,
                    decoder=decoder,
                    progress=progress,
                    run_info={"command": command, "model_path": str(checkpoint)},
                )
    except KeyboardInterrupt:  # the exit status of ssmamba predict, and of shells, for Ctrl-C
        click.secho(
            f"interrupted: no half-written file is left in {out_dir}; run the same command again",
            fg="yellow",
            err=True,
        )
        sys.exit(130)


def print_record(record: dict, out_dir: Path) -> None:
    """Print the ROI classes and the files written."""
    summary = record["summary"]
    click.echo(
        f"{summary['tiles']} tiles classified, {summary['background_tiles']} background "
        "tiles skipped"
    )
    for roi in summary["rois"]:
        click.echo(f"  {roi['name']}: {roi['verdict']}, {roi['n_tiles']} tiles")
    if record["model"]["untrained"]:
        click.secho("  (untrained model: these classes are not a result)", fg="yellow")
    from napari_ssmamba.export import output_paths, slide_stem

    click.echo(f"outputs in {out_dir}:")
    for path in output_paths(out_dir, slide_stem(record["slide"]["path"])).values():
        click.echo(f"  {path}")
