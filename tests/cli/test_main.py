import subprocess
import sys

from click.testing import CliRunner

from napari_ssmamba import __version__
from napari_ssmamba.cli import SUBCOMMANDS, main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_every_subcommand() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for name in SUBCOMMANDS:
        assert name in result.output


def test_help_does_not_import_torch_or_napari() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from napari_ssmamba.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
        "heavy = [m for m in ('torch', 'napari', 'openslide', 'qtpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
