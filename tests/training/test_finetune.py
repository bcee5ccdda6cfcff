import json
import shutil
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_ssmamba.errors import CancelledError
from napari_ssmamba.model import load_checkpoint
from napari_ssmamba.training.config import FinetuneConfig
from napari_ssmamba.training.finetune import finetune


def _config(out, **kwargs):
    values = dict(arch="ssmamba_test", out=str(out), epochs=4, batch_size=16, lr=3e-3, warmup_epochs=0.5,
                  device="cpu", patience=None, class_colors={"background": [200, 200, 200]})
    return FinetuneConfig(**{**values, **kwargs})


@pytest.fixture(scope="module")
def trained(small_task, tmp_path_factory, torch_threads):
    train, val = small_task
    out = tmp_path_factory.mktemp("finetune")
    epochs = []
    result = finetune(_config(out), train, val, on_epoch=epochs.append)
    return out, result, epochs


def test_finetuning_reaches_high_validation_accuracy(trained):
    out, result, epochs = trained
    assert len(epochs) == 4 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert result["metrics"]["balanced_accuracy"] >= 0.9
    assert (out / "eval.json").is_file() and "confusion" in result["table"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]


def test_checkpoint_is_in_the_model_format(trained, small_task):
    out, result, _ = trained
    model, card = load_checkpoint(result["checkpoint"])
    assert card.class_names == ["background", "lymphocytes", "muscle"] and card.class_colors[0] == (200, 200, 200)
    assert card.tile_size == 32 and card.mpp == 0.5 and not card.untrained
    assert card.training["val_metrics"]["balanced_accuracy"] == result["metrics"]["balanced_accuracy"]
    assert card.training["train_tiles"]["tiles_per_class"] == small_task[0].class_counts()
    assert card.training["best_epoch"] == result["best_epoch"]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_resume_after_cancel_equals_uninterrupted(small_task, tmp_path, torch_threads):
    train, val = small_task
    whole = finetune(_config(tmp_path / "whole", epochs=3), train, None)
    cancel = threading.Event()
    steps_per_epoch = len(train) // 16

    def stop_in_second_epoch(done, total, message):
        if done == steps_per_epoch + 1:
            cancel.set()

    with pytest.raises(CancelledError):
        finetune(_config(tmp_path / "parts", epochs=3), train, None, progress=stop_in_second_epoch, cancel=cancel)
    assert not (tmp_path / "parts" / "model.safetensors.json").exists()
    resumed = finetune(_config(tmp_path / "parts", epochs=3), train, None)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    a, _ = load_checkpoint(whole["checkpoint"])
    b, _ = load_checkpoint(resumed["checkpoint"])
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


def test_a_state_saved_with_other_settings_is_not_resumed(trained, small_task, tmp_path):
    from napari_ssmamba.errors import TrainingDataError

    out, _, _ = trained
    train, val = small_task
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    # one more epoch on a finished cosine schedule is not the 5-epoch run the card would claim
    with pytest.raises(TrainingDataError, match=r"other settings \(epochs 4 -> 5\).*--no-resume"):
        finetune(_config(copy, epochs=5), train, val)
    # where it runs may change
    resumed = finetune(_config(copy, num_workers=1), train, val)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2, 3]


def test_cached_frozen_stages_train_only_the_tail(small_task, tmp_path, torch_threads):
    train, val = small_task
    result = finetune(_config(tmp_path, epochs=3, freeze_stages=3, cached_views=2), train, val)
    model, card = load_checkpoint(result["checkpoint"])
    torch.manual_seed(0)
    fresh = __import__("napari_ssmamba.model", fromlist=["create_model"]).create_model("ssmamba_test", num_classes=3)
    torch.testing.assert_close(model.stages[2].state_dict(), fresh.stages[2].state_dict())
    assert not torch.equal(model.head.weight, fresh.head.weight)
    assert card.training["config"]["cached_views"] == 2


def test_class_without_training_tiles_is_refused(small_task, tmp_path):
    from napari_ssmamba.errors import SSMambaError
    from napari_ssmamba.training.data import TileSet

    train, val = small_task
    with_stroma = TileSet.concatenate([train], [*train.class_names, "stroma"])
    with pytest.raises(SSMambaError, match="no training tile of class stroma"):
        finetune(_config(tmp_path), with_stroma, val)
    assert not (tmp_path / "model.safetensors").exists()


def test_validation_without_a_class_warns_and_says_so(small_task, tmp_path, torch_threads):
    train, val = small_task
    no_muscle = val.subset(
        [i for i in range(len(val)) if val.class_names[val.labels[i]] != "muscle"]
    )
    with pytest.warns(UserWarning, match="no validation tile of class muscle"):
        result = finetune(_config(tmp_path, epochs=1), train, no_muscle)
    assert result["metrics"]["classes_without_tiles"] == ["muscle"]
    assert "not measured, no tiles here: muscle" in result["table"]
    _, card = load_checkpoint(result["checkpoint"])
    assert card.training["val_metrics"]["classes_without_tiles"] == ["muscle"]


def test_the_card_takes_the_mpp_most_tiles_had():
    from napari_ssmamba.training.finetune import _tile_mpp

    def tiles(mpps):
        return SimpleNamespace(mpps=np.array(mpps, dtype=float))

    # slide tiles at 1 µm/px and a few small folder images resized whole to 0.25: not the finest
    assert _tile_mpp(tiles([1.0] * 117 + [0.25] * 6), {}) == 1.0
    assert _tile_mpp(tiles([0.5] * 40 + [1.0] * 40 + [np.nan]), {}) == 0.5
    assert _tile_mpp(tiles([np.nan]), {"mpp": 0.25}) == 0.25
