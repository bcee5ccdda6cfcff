import shutil

import numpy as np
import pytest
from shapely.geometry import box

from napari_ssmamba.annotations import Annotation
from napari_ssmamba.errors import SSMambaError
from napari_ssmamba.training.data import (
    EpochSampler,
    TileDataset,
    TileSet,
    class_balanced_weights,
    read_image,
    split_tiles,
    tiles_from_folder,
    tiles_from_image,
    tiles_from_slide,
    tiles_from_sources,
    tissue_fraction,
)

NCT = "nct-crc-he-100k"


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


def test_folder_images_are_cut_at_the_tiles_mpp(data_dir, tmp_path):
    from PIL import Image

    patch = data_dir / "patches" / "nct-crc-he-100k" / "TUM-AACHEHDV.tif"  # 224 px, 0.5 µm/px
    (tmp_path / "TUM").mkdir()
    shutil.copy(patch, tmp_path / "TUM" / patch.name)
    # 64 px at 1 µm/px: the centre 128 px of the patch, not the whole patch squashed (1.75 µm/px)
    tiles = tiles_from_folder(tmp_path, tile_size=64, mpp=0.5, mpps=[0.5, 1.0, 2.0])
    assert tiles.mpps.tolist() == [0.5, 1.0]  # 2 µm/px would need 256 px
    centre = Image.fromarray(read_image(patch)[48:176, 48:176]).resize((64, 64), Image.BILINEAR)
    np.testing.assert_array_equal(tiles.image(1), np.asarray(centre))
    with pytest.warns(UserWarning, match="1 of 1 images .* smaller than a 224 px tile at 1 µm/px"):
        whole = tiles_from_folder(tmp_path, tile_size=224, mpp=0.5, mpps=[1.0])
    assert whole.mpps.tolist() == [0.5]  # what it is, not the 1 µm/px asked for


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        tiles_from_folder(tmp_path / "nope", tile_size=32)


def test_the_annotations_colours_reach_the_model_card(cmu, tmp_path):
    from napari_ssmamba.model import load_checkpoint
    from napari_ssmamba.training.config import FinetuneConfig
    from napari_ssmamba.training.finetune import finetune

    tumour = Annotation(box(700, 1000, 1300, 1600), class_name="Tumor", color=(200, 0, 0))
    glass = Annotation(box(1700, 100, 2200, 600), class_name="glass")  # no colour of its own
    tiles = tiles_from_slide(cmu, [tumour, glass], tile_size=32, mpps=[2.0])
    tiles = TileSet.concatenate([tiles])
    config = FinetuneConfig(arch="ssmamba_test", out=str(tmp_path), epochs=1, batch_size=4,
                            device="cpu", class_colors={"glass": [220, 220, 220]})
    _, card = load_checkpoint(finetune(config, tiles)["checkpoint"])
    colours = dict(zip(card.class_names, card.class_colors))
    assert colours == {"Tumor": (200, 0, 0), "glass": (220, 220, 220)}  # the config's first


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


def test_image_of_one_tile_gives_that_tile(data_dir):
    patch = data_dir / "patches" / NCT / "TUM-AACHEHDV.tif"  # 224 x 224 px
    tiles = tiles_from_image(patch, "tumour", source_mpp=0.5, tile_size=224, blocks=2)
    assert len(tiles) == 1 and list(tiles.groups) == ["TUM-AACHEHDV.tif#block0"]
    region = data_dir / "patches" / "histolab-tiles" / "no-tissue.png"  # 512 x 512 px
    tiles = tiles_from_image(region, "glass", source_mpp=0.5, tile_size=224, blocks=2)
    assert len(np.unique(tiles.groups)) == 4  # large enough: still split by 2 x 2 block


def test_image_smaller_than_a_tile_names_file_and_fix(data_dir, tmp_path):
    from PIL import Image

    small = tmp_path / "small.png"
    Image.open(data_dir / "patches" / NCT / "TUM-AACHEHDV.tif").crop((0, 0, 150, 150)).save(small)
    with pytest.raises(
        SSMambaError,
        match=r"small.png gives no 224 px tile at 0.5 µm/px: it is "
        r"150 x 150 px .* use a smaller tile size",
    ):
        tiles_from_image(small, "tumour", source_mpp=0.5, tile_size=224)


def test_missing_image_source_names_the_path(tmp_path):
    with pytest.raises(SSMambaError, match="nope.png: no such image; correct the path"):
        tiles_from_sources(
            [{"image": str(tmp_path / "nope.png"), "class": "a", "mpp": 0.5}],
            tile_size=32,
            mpps=[0.5],
        )


def test_region_class_without_tiles_names_class_and_fix(cmu):
    tissue = Annotation(box(700, 1000, 1300, 1600), class_name="tissue")
    speck = Annotation(box(100, 100, 140, 130), class_name="speck")
    with pytest.raises(
        SSMambaError,
        match=r"class 'speck' \(largest 40 x 30 px\) give no 64 px tile.*larger regions",
    ):
        tiles_from_slide(cmu, [tissue, speck], tile_size=64, mpps=[0.5])


def _mixed_groups(group_classes: list[list[int]]) -> TileSet:
    """A tile set with one tile per (group, class) pair listed."""
    pairs = [(f"g{g}", c) for g, classes in enumerate(group_classes) for c in classes]
    return TileSet(
        class_names=["a", "b", "c"],
        items=[np.zeros((8, 8, 3), np.uint8)] * len(pairs),
        labels=np.array([c for _, c in pairs]),
        groups=np.array([g for g, _ in pairs]),
        sources=np.array([g for g, _ in pairs]),
        mpps=np.full(len(pairs), 0.5),
        tile_size=8,
    )


@pytest.mark.parametrize("seed", range(6))
def test_split_puts_every_class_of_two_groups_on_both_sides(seed):
    # 'b' is never a group's majority; 'c' has a single group, which must stay in training
    tiles = _mixed_groups([[0, 0, 1]] * 2 + [[0]] * 8 + [[2]])
    train, val = split_tiles(tiles, 0.6, seed=seed)
    assert not set(train.groups) & set(val.groups)
    assert all(train.class_counts().values())
    assert val.class_counts()["a"] and val.class_counts()["b"] and not val.class_counts()["c"]


@pytest.mark.parametrize(
    "groups",
    [
        [[0, 0, 2], [0], [0], [0], [1], [1], [1]],  # 'c' only a minority, in one group
        [[0, 0, 2], [1, 1, 2], [0], [1]],  # 'c' only a minority, in two groups
    ],
)
def test_split_keeps_every_class_in_training(groups):
    tiles = _mixed_groups(groups)
    for seed in range(50):
        train, val = split_tiles(tiles, 0.3, seed=seed)
        assert all(train.class_counts().values()), (seed, train.class_counts())
        assert not set(train.groups) & set(val.groups)


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
