import json

import pytest

from napari_ssmamba.settings import Settings, config_dir, load_settings, save_settings


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SSMAMBA_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def test_defaults_without_a_file():
    assert load_settings() == Settings(device="auto", default_model=None)


def test_round_trip(config_home):
    path = save_settings(Settings(device="cpu", default_model="/models/m.safetensors"))
    assert path.parent == config_dir() == config_home
    assert load_settings() == Settings(device="cpu", default_model="/models/m.safetensors")
    assert [p.name for p in config_home.iterdir()] == ["settings.json"]  # no temporary left


@pytest.mark.parametrize("content", ["{not json", json.dumps({"device": "tpu"}), "[1, 2]"])
def test_bad_file_gives_defaults(config_home, content):
    config_home.mkdir(parents=True)
    (config_home / "settings.json").write_text(content)
    assert load_settings() == Settings()


def test_invalid_device_is_refused():
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        Settings(device="gpu")
