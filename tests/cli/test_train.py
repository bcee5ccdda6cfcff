import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from napari_ssmamba.cli import main

PATCHES = Path(__file__).parents[2] / ".." / "shared" / "data" / "patches" / "nct-crc-he-100k"


@pytest.fixture
def config(tmp_path):
    if not PATCHES.is_dir():
        pytest.skip(f"shared test data not found at {PATCHES}")
    sources = [{"image": str(PATCHES.resolve() / name), "class": label, "mpp": 0.5, "blocks": 2,
                "min_coverage": 0.51}
               for name, label in [("BACK-AAQSHYMA.tif", "background"), ("LYM-AATTSRNN.tif", "lymphocytes")]]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"arch": "ssmamba_test", "epochs": 1, "batch_size": 16, "device": "cpu",
                                    "data": {"sources": sources, "tile_size": 32, "mpps": [0.5]}}))
    return path


def test_finetune_then_evaluate(config, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["train", "finetune", "--config", str(config), "--out", str(out),
                                  "--set", "lr=0.003", "--set", "patience=null"])
    assert result.exit_code == 0, result.output
    assert "model saved to" in result.output and "balanced_accuracy" in result.output
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["phase"] == "fine-tuning" and record["epoch"] == 0
    result = runner.invoke(main, ["train", "evaluate", "--checkpoint", str(out), "--config", str(config),
                                  "--output", str(tmp_path / "eval.json"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 72
    # tiles are cut as the model's card says, whatever the config's tile size
    result = runner.invoke(main, ["train", "evaluate", "--checkpoint", str(out), "--config", str(config),
                                  "--set", "data.tile_size=64", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warning: evaluating at the model's 32 px and 0.5 µm/px" in result.output
    assert "n=72 " in result.output


def test_unknown_config_key_is_a_usage_error(config):
    result = CliRunner().invoke(main, ["train", "finetune", "--config", str(config), "--set", "epoch=3"])
    assert result.exit_code == 2 and "unknown FinetuneConfig keys ['epoch']" in result.output


def _patch_sources(*names, **keys):
    return [
        {"image": str(PATCHES.resolve() / name), "class": name.split("-")[0], "mpp": 0.5, **keys}
        for name in names
    ]


@pytest.mark.parametrize(
    "command, sources, tile_size, message",
    [
        ("finetune", [], 32, "run.yaml: no data sources; add data.sources"),
        ("pretrain", [], 32, "run.yaml: no data sources; add data.sources"),
        (
            "finetune",
            [{"image": "nope.png", "class": "a", "mpp": 0.5}],
            32,
            "nope.png: no such image; correct the path",
        ),
        (
            "pretrain",
            _patch_sources("BACK-AAQSHYMA.tif"),
            256,
            "BACK-AAQSHYMA.tif gives no 256 px tile at 0.5 µm/px: it is 224 x 224 px",
        ),
        (
            "finetune",
            _patch_sources("BACK-AAQSHYMA.tif", "LYM-AATTSRNN.tif"),
            224,
            "fine-tuning: 2 tiles do not fill one batch of 16; lower batch_size",
        ),
    ],
)
def test_unusable_data_is_a_one_line_error(config, command, sources, tile_size, message):
    values = yaml.safe_load(config.read_text())
    values["data"].update(sources=sources, tile_size=tile_size)
    config.write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(
        main, ["train", command, "--config", str(config), "--out", str(config.parent / "run")]
    )
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_class_of_one_block_is_trained_with_a_warning(config, tmp_path):
    values = yaml.safe_load(config.read_text())
    values["data"]["sources"][0]["blocks"] = 1  # background: one group, so training only
    config.write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(
        main, ["train", "finetune", "--config", str(config), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    assert "warning: no validation tile of class background" in result.output
    assert "not measured, no tiles here: background" in result.output


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from napari_ssmamba.cli import train; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
