import json
import pickle

import pytest
import torch

from napari_ssmamba.errors import CheckpointError
from napari_ssmamba.model import (
    FORMAT_VERSION,
    ModelCard,
    create_model,
    default_checkpoint,
    load_checkpoint,
    read_card,
    save_checkpoint,
)


def _card(**kw):
    values = dict(arch="ssmamba_test", class_names=["tumour", "stroma"],
                  class_colors=[(200, 0, 0), (0, 120, 0)], training={"epochs": 3, "tiles": 120})
    values.update(kw)
    return ModelCard(**values)


@pytest.fixture
def saved(tmp_path):
    model = create_model("ssmamba_test", num_classes=2).eval()
    path = save_checkpoint(model, _card(), tmp_path / "ckpt" / "model.safetensors")
    return model, path


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    x = torch.randn(2, 3, 64, 64)
    for where in (path, path.parent, path.with_suffix(".json")):
        loaded, card = load_checkpoint(where)
        assert not loaded.training
        assert torch.equal(loaded(x), model(x))
    assert card.class_names == ["tumour", "stroma"] and card.class_colors == [(200, 0, 0), (0, 120, 0)]
    assert card.training == {"epochs": 3, "tiles": 120} and card.format_version == FORMAT_VERSION
    assert len(card.weights_sha256) == 64
    assert loaded.pretrained_cfg["tile_size"] == 224 and loaded.pretrained_cfg["mpp"] == 0.5


def test_card_is_plain_json(saved):
    data = json.loads(saved[1].with_suffix(".json").read_text())
    assert data["arch"] == "ssmamba_test" and data["untrained"] is False
    assert read_card(saved[1]).num_classes == 2


def test_replaced_weights_fail_the_hash(saved, tmp_path):
    _, path = saved
    other = create_model("ssmamba_test", num_classes=2)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_weights_not_matching_the_card(saved):
    _, path = saved
    card_path = path.with_suffix(".json")
    data = json.loads(card_path.read_text())
    data["class_names"].append("fat")
    data["class_colors"].append([255, 255, 0])
    card_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not match its card"):
        load_checkpoint(path)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("arch"), "lacks"),
    (lambda d: d.update(arch="resnet9000"), "unknown architecture"),
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "newer"),
    (lambda d: d.update(class_colors=[[1, 2, 3]]), "invalid model card"),
    (lambda d: d.update(format_version="1"), "format_version must be a whole number"),
    (lambda d: d.update(model_kwargs={"num_direction": 4}), "invalid model_kwargs"),
])
def test_bad_cards(saved, edit, message):
    card_path = saved[1].with_suffix(".json")
    data = json.loads(card_path.read_text())
    edit(data)
    card_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved[1])


def test_a_backbone_is_no_classifier_and_a_folder_means_its_model(saved, tmp_path):
    folder = saved[1].parent
    backbone = create_model("ssmamba_test", num_classes=0)
    save_checkpoint(backbone, _card(class_names=[], class_colors=[]), folder / "backbone.safetensors")
    _, card = load_checkpoint(folder)  # model.safetensors, not the backbone sorted first
    assert card.class_names == ["tumour", "stroma"]
    saved[1].unlink()
    with pytest.raises(CheckpointError, match="fine-tune it first"):
        load_checkpoint(folder)
    _, card = load_checkpoint(folder, require_classes=False)  # what fine-tuning starts from
    assert card.num_classes == 0
    (folder / "backbone.safetensors").rename(folder / "a.safetensors")
    (folder / "backbone.json").rename(folder / "a.json")
    save_checkpoint(backbone, _card(class_names=[], class_colors=[]), folder / "b.safetensors")
    with pytest.raises(CheckpointError, match=r"several checkpoints .*a.safetensors, b.safetensors"):
        load_checkpoint(folder, require_classes=False)


def test_missing_card(saved):
    saved[1].with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="model card not found"):
        load_checkpoint(saved[1])


class _Planted:
    """Unpickling this calls Path.touch on the marker: code execution from a checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (self.marker,)


def test_planted_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"stem.conv1.weight": torch.zeros(1), "payload": _Planted(marker)}, path)
    # the payload is live: a plain unpickler runs it
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Planted(probe)))
    assert probe.exists()
    save_card = _card()
    (tmp_path / "model.json").write_text(json.dumps(save_card.to_dict()))
    for given in (path, tmp_path / "model.json", tmp_path):
        with pytest.raises(CheckpointError, match="model.pt: a pickle file"):
            load_checkpoint(given)
    assert not marker.exists()


def test_a_pickle_is_refused_with_the_way_to_convert_it(tmp_path):
    model = create_model("ssmamba_test", num_classes=2).eval()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "weights.pth")  # as Lightning does
    with pytest.raises(CheckpointError, match="never opens") as refused:
        load_checkpoint(tmp_path / "weights.pth")  # no card: the pickle is named, not the card
    # the conversion the message gives, run where the file is trusted, makes a loadable pair
    command = str(refused.value).split("python -c ")[1].split(", and point at")[0].strip('"')
    exec(command)
    (tmp_path / "weights.json").write_text(json.dumps(_card().to_dict()))
    loaded, _ = load_checkpoint(tmp_path / "weights.safetensors")
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), model(x))


def test_old_key_layout_is_rewritten(tmp_path):
    from safetensors.torch import save_file

    model = create_model("ssmamba_test", num_classes=2).eval()
    old = {k.replace("stem.", "patch_embed.").replace("mixer.merge", "mixer.path_weight"): v.contiguous()
           for k, v in model.state_dict().items()}
    save_file(old, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps(dict(_card().to_dict(), format_version=0,
                                                         weights_sha256=None)))
    loaded, _ = load_checkpoint(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), model(x))


def test_head_and_card_must_agree_to_save(tmp_path):
    model = create_model("ssmamba_test", num_classes=3)
    with pytest.raises(ValueError, match="3 outputs"):
        save_checkpoint(model, _card(), tmp_path)
    assert not list(tmp_path.iterdir())


def test_default_checkpoint_is_loadable_or_a_clear_error():
    try:
        path = default_checkpoint()
    except CheckpointError as exc:
        assert "default model" in str(exc)
    else:
        model, card = load_checkpoint(path)
        assert card.num_classes == model.num_classes
