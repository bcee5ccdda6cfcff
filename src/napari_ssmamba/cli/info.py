"""``ssmamba info``: what a slide holds (vendor, levels, pixel size, channels, associated images)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from napari_ssmamba.cli import errors_as_messages
from napari_ssmamba.slide.properties import PROPERTY_OBJECTIVE_POWER

#: the largest square read to check that the smallest stored level decodes
_CHECK_SIDE = 256


def slide_summary(slide) -> dict:
    """A JSON-ready description of an open slide."""
    stored = slide.native_level_count
    return {
        "path": str(slide.path),
        "backend": type(slide).__name__,
        "pixel_reader": slide.pixel_reader,
        "vendor": slide.vendor,
        "dimensions": list(slide.dimensions),
        "mpp": list(slide.mpp) if slide.mpp is not None else None,
        "dtype": str(slide.dtype),
        "rgb": slide.is_rgb,
        "channels": slide.channel_names or (["R", "G", "B"] if slide.is_rgb else None),
        "tile_size": list(slide.tile_size[::-1]),
        "levels": [
            {"level": i, "dimensions": list(dims), "downsample": round(ds, 4),
             "stored": i < stored}
            for i, (dims, ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples))
        ],
        "associated": {name: list(image.shape[1::-1]) for name, image in slide.associated.items()},
        "objective_power": slide.properties.get(PROPERTY_OBJECTIVE_POWER),
    }


def _print_summary(info: dict) -> None:
    echo = click.echo
    echo(f"{info['path']}")
    echo(f"  vendor      {info['vendor']} (read with {info['backend']}, pixels decoded by "
         f"{info['pixel_reader']})")
    width, height = info["dimensions"]
    echo(f"  dimensions  {width} x {height} px, {info['dtype']}, tiles "
         f"{info['tile_size'][0]} x {info['tile_size'][1]}")
    if info["mpp"] is None:
        echo("  MPP         unknown (give it with --mpp where a command needs it)")
    else:
        mpp_y, mpp_x = info["mpp"]
        echo(f"  MPP         {mpp_x:.6g} x {mpp_y:.6g} µm/px (x, y)")
    if info["objective_power"]:
        echo(f"  objective   {info['objective_power']}x")
    echo(f"  channels    {', '.join(info['channels']) if info['channels'] else 'one'}")
    echo("  levels")
    for level in info["levels"]:
        w, h = level["dimensions"]
        kind = "" if level["stored"] else "  (computed)"
        echo(f"    {level['level']:>2}  {w:>7} x {h:<7} downsample {level['downsample']:g}{kind}")
    if info["associated"]:
        images = ", ".join(f"{name} ({w} x {h})" for name, (w, h) in info["associated"].items())
        echo(f"  associated  {images}")
    else:
        echo("  associated  none")


@click.command()
@click.argument("slide_path", metavar="SLIDE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(slide_path: Path, *, as_json: bool) -> None:
    """Describe SLIDE: vendor, pyramid levels, pixel size (MPP), channels, associated images.

    Reads one tile of the smallest stored level, so a slide whose pixels cannot be decoded
    fails here with exit status 1.
    """
    from napari_ssmamba.slide import open_slide

    with errors_as_messages(), open_slide(slide_path) as slide:
        level = slide.native_level_count - 1
        width, height = slide.level_dimensions[level]
        slide.read_region(level, 0, 0, min(height, _CHECK_SIDE), min(width, _CHECK_SIDE))
        summary = slide_summary(slide)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
