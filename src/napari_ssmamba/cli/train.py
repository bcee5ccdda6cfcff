"""``ssmamba train``: MAMIM pretraining, fine-tuning, evaluation, and the bundled default model.

Each command reads a YAML config (see ``training/recipes/``), applies ``--set key=value``
overrides and the typed options, shows a rich progress bar and writes metrics to
``OUT/metrics.jsonl``. Under torchrun every rank runs the same command; only rank 0 writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from napari_ssmamba.cli import errors_as_messages, warnings_shown_on

_config_option = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                              help="YAML run configuration (docs/training.md shows one).")
_set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                           help="Override a config key (dotted keys nest: data.tile_size=64). Repeatable.")


def _common(function):
    for option in reversed([
        _config_option,
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder."),
        click.option("--arch", help="Architecture, e.g. ssmamba_tiny."),
        click.option("--epochs", type=click.IntRange(min=1)),
        click.option("--batch-size", type=click.IntRange(min=1), help="Global batch (all ranks)."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True)),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--no-resume", is_flag=True, help="Start afresh even if OUT holds a training state."),
        _set_option,
    ]):
        function = option(function)
    return function


def _load(cls, config_path, overrides, **options):
    from napari_ssmamba.training.config import load_config

    names = {"out": "out", "arch": "arch", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
             "device": "device"}
    pairs = list(overrides) + [f"{names[k]}={v}" for k, v in options.items() if k in names and v is not None]
    if options.get("no_resume"):
        pairs.append("resume=false")
    try:
        return load_config(cls, config_path, pairs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _require_sources(sources, config_path) -> None:
    """Stop with a message naming the config when it gives no data sources."""
    if not sources:
        where = (
            f"{config_path}: no data sources" if config_path else "no data sources (no --config)"
        )
        raise click.ClickException(
            f"{where}; add data.sources, a list of entries such as "
            "{image: PATH, class: NAME, mpp: 0.5}, {folder: DIR, mpp: 0.5} or "
            "{slide: PATH, annotations: GEOJSON}"
        )


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _run_with_progress(job, **kwargs):
    """Run ``job(progress=..., on_epoch=..., **kwargs)`` under a rich progress bar (rank 0 only).

    Warnings show as one ``warning:`` line each; our errors end the command with their message;
    Ctrl-C exits 130.
    """
    from rich.console import Console

    if not _is_main():
        with errors_as_messages():
            return job(**kwargs)
    console = Console(stderr=True)
    try:
        return _with_progress_bar(console, job, **kwargs)
    except KeyboardInterrupt:  # the exit status of classify and predict, and of shells
        console.print(
            "[yellow]interrupted[/]: the last finished epoch is kept; run the same command "
            "again to resume"
        )
        sys.exit(130)


def _with_progress_bar(console, job, **kwargs):
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with (
        errors_as_messages(),
        Progress(*columns, console=console) as bar,
        warnings_shown_on(bar.console),
    ):
        task = bar.add_task("starting", total=None)

        def progress(done, total, message):
            bar.update(task, completed=done, total=total, description=message)

        def on_epoch(record):
            shown = ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in record.items()
                if k not in ("lr", "seconds", "step")
            )
            bar.console.print(shown)

        return job(progress=progress, on_epoch=on_epoch, **kwargs)


@click.group()
def train() -> None:
    """Pretrain (MAMIM), fine-tune and evaluate SSMamba models; retrain the bundled default."""


@train.command()
@_common
@click.option("--mask-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True))
def pretrain(config_path, overrides, mask_ratio, **options):
    """MAMIM masked image modelling on unlabelled tiles; writes OUT/backbone.safetensors."""
    from napari_ssmamba.training.config import PretrainConfig
    from napari_ssmamba.training.mamim import pretrain_from_config

    if mask_ratio is not None:
        overrides = (*overrides, f"mask_ratio={mask_ratio}")
    config = _load(PretrainConfig, config_path, overrides, **options)
    _require_sources(config.data.sources, config_path)
    result = _run_with_progress(pretrain_from_config, config=config)
    if _is_main():
        click.echo(f"backbone saved to {result['checkpoint']}")


@train.command()
@_common
@click.option(
    "--init",
    type=click.Path(exists=True, path_type=Path),
    help="Backbone checkpoint to start from.",
)
def finetune(config_path, overrides, init, **options):
    """Supervised fine-tuning; writes OUT/model.safetensors + model.json and OUT/eval.json."""
    from napari_ssmamba.training.config import FinetuneConfig
    from napari_ssmamba.training.finetune import finetune_from_config

    if init is not None:
        overrides = (*overrides, f"init={init}")
    config = _load(FinetuneConfig, config_path, overrides, **options)
    _require_sources(config.data.sources, config_path)
    result = _run_with_progress(finetune_from_config, config=config)
    if _is_main():
        if result["table"]:
            click.echo(result["table"])
        click.echo(f"model saved to {result['checkpoint']}")


@train.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, path_type=Path))
@_config_option
@_set_option
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics JSON here."
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
def evaluate(checkpoint, config_path, overrides, output, device):
    """Accuracy, balanced accuracy, macro F1, per-class AUROC and confusion matrix on labelled tiles."""
    from rich.console import Console

    from napari_ssmamba.training.config import FinetuneConfig
    from napari_ssmamba.training.distributed import resolve_device
    from napari_ssmamba.training.evaluate import evaluate_from_config, format_metrics, write_metrics

    config = _load(FinetuneConfig, config_path, overrides)
    _require_sources(config.data.val_sources or config.data.sources, config_path)
    with errors_as_messages(), warnings_shown_on(Console(stderr=True)):
        metrics = evaluate_from_config(
            checkpoint, config.data, seed=config.seed, device=resolve_device(device)
        )
    click.echo(format_metrics(metrics))
    if output is not None:
        write_metrics(metrics, output)
        click.echo(f"metrics written to {output}")


@train.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The shared data folder (slides/, patches/).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@_set_option
def default(data_dir, out, overrides):
    """Re-train the bundled default model (tissue / background / artefact) from its recipe."""
    from napari_ssmamba.training.default_model import train_default_model

    result = _run_with_progress(train_default_model, data_dir=data_dir, out=out, overrides=overrides)
    if _is_main():
        click.echo(result["table"] or "")
        click.echo(f"model saved to {result['checkpoint']}")
