import shutil

import numpy as np
import pytest
from shapely.geometry import box

from napari_ssmamba.annotations import Annotation
from napari_ssmamba.training.data import (
    EpochSampler,
    TileDataset,
    TileSet,
    class_balanced_weights,
    split_tiles,
    tiles_from_folder,
    tiles_from_slide,
    tissue_fraction,
)


@pytest.fixture
def cmu(data_dir):
    from napari_ssmamba.slide import open_slide

    with open_slide(data_dir / "slides" / "CMU-1-Small-Region.svs") as slide:
        yield slide


def test_folder_dataset_takes_classes_from_folders(data_dir, tmp_path):
    patches = data_dir / "patches" / "nct-crc-he-100k"
    for name in ("ADI-AAQEFMRI.tif", "BACK-AAQSHYMA.tif", "TUM-AACHEHDV.tif"):
        (tmp_path / name.split("-")[0]).mkdir()
        shutil.copy(patches / name, tmp_path / name.split("-")[0] / name)
    (tmp_path / "TUM" / "notes.txt").write_text("not an image")
    tiles = tiles_from_folder(tmp_path, tile_size=64, mpp=0.5)
    assert tiles.class_names == ["ADI", "BACK", "TUM"]
    assert tiles.class_counts() == {"ADI": 1, "BACK": 1, "TUM": 1}
    assert tiles.image(2).shape == (64, 64, 3)
    merged = tiles_from_folder(tmp_path, tile_size=32, class_map={"ADI": "tissue", "TUM": "tissue",
                                                                  "BACK": "background"})
    assert merged.class_counts() == {"tissue": 2, "background": 1}
    assert len(np.unique(merged.groups)) == 3


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        tiles_from_folder(tmp_path / "nope", tile_size=32)


def test_slide_regions_at_two_mpps(cmu):
    tissue = Annotation(box(700, 1000, 1300, 1600), class_name="tissue")
    glass = Annotation(box(1700, 100, 2200, 600), class_name="glass")
    tiles = tiles_from_slide(cmu, [tissue, glass], tile_size=64, mpps=[0.5, 1.0])
    counts = tiles.class_counts()
    assert set(counts) == {"glass", "tissue"} and min(counts.values()) > 0
    assert set(np.unique(tiles.mpps)) == {0.5, 1.0}
    assert set(np.unique(tiles.groups)) == {f"CMU-1-Small-Region.svs#{a.id}" for a in (tissue, glass)}
    glass_tiles = [tiles.image(i) for i in np.flatnonzero(tiles.labels == tiles.class_names.index("glass"))]
    tissue_tiles = [tiles.image(i) for i in np.flatnonzero(tiles.labels == tiles.class_names.index("tissue"))]
    assert np.mean([tissue_fraction(t) for t in tissue_tiles]) > np.mean([tissue_fraction(t) for t in glass_tiles])


def test_unlabelled_slide_tiles_are_tissue_filtered(cmu):
    tiles = tiles_from_slide(cmu, None, tile_size=64, mpps=[2.0], blocks=2)
    assert len(tiles) > 10 and (tiles.labels == -1).all()
    assert min(tissue_fraction(tiles.image(i)) for i in range(len(tiles))) >= 0.3
    assert len(np.unique(tiles.groups)) == 4


def test_split_never_shares_a_group(small_task):
    train, val = small_task
    assert not set(train.groups) & set(val.groups)
    assert set(train.class_names) == set(val.class_names)
    assert all(n > 0 for n in val.class_counts().values())
    by_source = split_tiles(TileSet.concatenate([train, val]), 0.34, by="source", seed=1)
    assert not set(by_source[0].sources) & set(by_source[1].sources)


@pytest.mark.parametrize("weights", [None, "balanced"])
def test_sampler_ranks_cover_the_single_process_order(weights):
    labels = np.array([0] * 30 + [1] * 6)
    w = class_balanced_weights(labels) if weights else None
    single = list(EpochSampler(36, weights=w, seed=5))
    ranks = [list(EpochSampler(36, weights=w, seed=5, num_replicas=2, rank=r)) for r in range(2)]
    interleaved = [item for pair in zip(*ranks) for item in pair]
    assert interleaved == single
    if weights:
        drawn = labels[[i for i, _ in single]]
        assert 0.25 < drawn.mean() < 0.75  # about half from the rare class


def test_dataset_augments_from_the_sample_seed(small_task):
    from napari_ssmamba.training.augment import HEAugment

    train, _ = small_task
    dataset = TileDataset(train, mean=(0.5,) * 3, std=(0.25,) * 3, augment=HEAugment())
    a, label = dataset[(3, 11)]
    assert a.shape == (3, 32, 32) and label == train.labels[3]
    assert (a == dataset[(3, 11)][0]).all()
    assert not (a == dataset[(3, 12)][0]).all()
