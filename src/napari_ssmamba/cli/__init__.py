"""The ``ssmamba`` command: a click group whose subcommands live one per module.

Subcommands are imported only when invoked, so ``ssmamba --help`` does not import torch.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings

import click

from napari_ssmamba.__about__ import __version__

#: subcommand name -> "module:attribute" under napari_ssmamba.cli
SUBCOMMANDS = {
    "info": "info:info",
    "classify": "classify:classify",
    "predict": "predict:predict",
    "train": "train:train",
    "demo": "demo:demo",
}


@contextlib.contextmanager
def errors_as_messages():
    """Our errors, and missing or unreadable files, end the command with their message (exit 1)."""
    from napari_ssmamba.errors import SSMambaError

    try:
        yield
    except (SSMambaError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.contextmanager
def warnings_shown_on(console):
    """Show Python warnings as one ``warning: ...`` line on a rich ``console`` (above its
    progress bar), without the file, line and source that Python prints."""

    def show(message, *_):
        console.print(
            f"warning: {message}", markup=False, highlight=False, style="yellow", soft_wrap=True
        )

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def load_model(checkpoint):
    """``(path, model, card)`` of ``--model`` (the bundled model without one), on the CPU, with a
    warning when it is untrained."""
    from pathlib import Path

    from napari_ssmamba.model import default_checkpoint, load_checkpoint

    checkpoint = Path(checkpoint or default_checkpoint())
    model, card = load_checkpoint(checkpoint, device="cpu")
    if card.untrained:
        click.secho(
            f"warning: the model {checkpoint} is UNTRAINED; its classes are not a result.",
            fg="yellow",
            err=True,
        )
    return checkpoint, model, card


class LazyGroup(click.Group):
    """A group that imports each subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"napari_ssmamba.cli.{module_name}")
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ssmamba")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
    help="Logging verbosity.",
)
def main(log_level: str) -> None:
    """Classify whole-slide images with SSMamba: slide info, ROI classification, batch
    prediction over many slides, and training."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
