import numpy as np

from napari_ssmamba.model import load_checkpoint
from napari_ssmamba.model.checkpoint import DEFAULT_CHECKPOINT_DIR
from napari_ssmamba.training.data import split_tiles
from napari_ssmamba.training.default_model import (
    CLASS_NAMES,
    add_synthetic_artefacts,
    default_tiles,
)


def test_default_data_has_every_class_and_splits_by_group(data_dir):
    tiles = default_tiles(data_dir, tile_size=64, mpps=(2.0,))
    assert tiles.class_names == CLASS_NAMES
    counts = tiles.class_counts()
    assert counts["tissue"] > 5 and counts["background"] > 5 and counts["artefact"] >= 1
    train, val = split_tiles(tiles, 0.25, seed=0)
    train = add_synthetic_artefacts(train, 0.25, seed=0)
    assert not {g.split(":", 1)[-1] for g in train.groups} & set(val.groups)
    drawn = np.flatnonzero(np.char.startswith(train.groups.astype(str), "synthetic-"))
    assert len(drawn) and (train.labels[drawn] == CLASS_NAMES.index("artefact")).all()


def test_bundled_model_card_is_honest():
    model, card = load_checkpoint(DEFAULT_CHECKPOINT_DIR)
    assert card.class_names == CLASS_NAMES and not card.untrained
    assert card.arch == "ssmamba_tiny" and card.tile_size == 224 and card.mpp == 0.5
    assert set(card.training["val_metrics"]["per_class"]) == set(CLASS_NAMES)
    assert "no diagnostic" in card.training["data"]["knows"]
    assert all(v["licence"] for v in card.training["data"]["sources"].values())
