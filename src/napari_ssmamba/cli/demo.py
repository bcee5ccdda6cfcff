"""``ssmamba demo``: classify the bundled sample slide with the bundled model, whole tissue."""

from __future__ import annotations

from pathlib import Path

import click

SAMPLE_SLIDE = Path(__file__).resolve().parents[1] / "data" / "CMU-1-Small-Region.svs"


@click.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder for the GeoJSON, heatmap TIFF, PNG figure, tile CSV and run record.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def demo(out_dir: Path, device: str) -> None:
    """Classify the bundled CMU-1 sample slide (whole tissue) with the bundled model into --out."""
    from napari_ssmamba.cli.classify import print_record, run_classify

    click.echo(f"classifying {SAMPLE_SLIDE.name} (bundled sample, CC0) with the bundled model")
    record = run_classify(SAMPLE_SLIDE, out_dir, device=device, command="ssmamba demo")
    print_record(record, out_dir)
