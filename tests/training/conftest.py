import pytest


@pytest.fixture(scope="session")
def small_task(data_dir):
    """Background / lymphocytes / muscle at 32 px from three NCT-CRC-HE-100K patches, split by 2x2 block."""
    from napari_ssmamba.training.data import TileSet, split_tiles, tiles_from_image

    patches = data_dir / "patches" / "nct-crc-he-100k"
    sets = [
        tiles_from_image(patches / name, label, source_mpp=0.5, tile_size=32, mpps=[0.5], blocks=2,
                         min_coverage=0.51)
        for name, label in [("BACK-AAQSHYMA.tif", "background"), ("LYM-AATTSRNN.tif", "lymphocytes"),
                            ("MUS-AACVWIEK.tif", "muscle")]
    ]
    tiles = TileSet.concatenate(sets, ["background", "lymphocytes", "muscle"])
    return split_tiles(tiles, 0.25, seed=0)


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(1)
