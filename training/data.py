"""Tiles for training: from slides with labelled regions, plain images, and one-folder-per-class sets.

A :class:`TileSet` is a list of tiles (in memory or files read on demand) with their class, the
source file and the *group* they were cut from (an annotated region, an image block or a file).
Splits are by group or by source file, never by tile, so neighbouring tiles do not leak across
train and validation. :class:`TileDataset` turns a TileSet into normalised tensors, augmented per
sample from the seed that :class:`EpochSampler` hands out with each index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_ssmamba.errors import MissingSourceError, TrainingDataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
UNLABELLED = -1


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image file as (y, x, 3) uint8 (PNG, JPEG and TIFF through Pillow or tifffile)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):  # Pillow cannot decode some TIFF layouts
        import tifffile

        array = tifffile.imread(path)
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = np.moveaxis(array, 0, -1)
        return np.ascontiguousarray(array[..., :3]).astype(np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (y, x, 3) uint8 to (size, size, 3) with an antialiased bilinear filter."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.imagewidth, page.imagelength


@dataclass(frozen=True)
class FolderImage:
    """An image file of a folder data set, and how it becomes a tile: the centre square that
    covers a tile at ``scale`` (the image's µm/px over the tile's), resized to the tile; with
    ``scale`` None its largest centre square, whatever its µm/px."""

    path: Path
    scale: float | None = None

    def tile(self, tile_size: int) -> np.ndarray:
        """The (tile_size, tile_size, 3) uint8 tile."""
        image = read_image(self.path)
        side = None if self.scale is None else min(round(tile_size / self.scale), *image.shape[:2])
        return resize(_centre_square(image, side), tile_size)


def _centre_square(image: np.ndarray, side: int | None = None) -> np.ndarray:
    """The centre ``side`` square of an image (default: its largest)."""
    height, width = image.shape[:2]
    side = side or min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def tissue_fraction(tile: np.ndarray) -> float:
    """Share of pixels that look stained: not near-white and with some colour saturation."""
    tile = tile.astype(np.int16)
    grey = tile.mean(axis=-1)
    saturation = tile.max(axis=-1) - tile.min(axis=-1)
    return float(((grey < 220) & (saturation > 15)).mean())


@dataclass
class TileSet:
    """Tiles with labels, split groups and source files.

    ``items[i]`` is a (tile_size, tile_size, 3) uint8 array, a path read on demand, or a
    :class:`FolderImage`.
    ``labels[i]`` indexes ``class_names`` (``UNLABELLED`` for pretraining tiles); ``groups[i]``
    is the unit of a split (a region or block); ``sources[i]`` the file it came from;
    ``mpps[i]`` the µm/px it was sampled at (NaN when unknown). ``class_colors`` holds the
    colours the sources gave classes (QuPath annotations do), by name.
    """

    class_names: list[str]
    items: list
    labels: np.ndarray
    groups: np.ndarray
    sources: np.ndarray
    mpps: np.ndarray
    tile_size: int
    info: dict = field(default_factory=dict)
    class_colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> np.ndarray:
        """Tile ``index`` as (tile_size, tile_size, 3) uint8."""
        item = self.items[index]
        if isinstance(item, FolderImage):
            return item.tile(self.tile_size)
        if not isinstance(item, np.ndarray):
            item = read_image(item)
        return resize(item, self.tile_size)

    def subset(self, indices: Sequence[int]) -> TileSet:
        indices = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            items=[self.items[i] for i in indices],
            labels=self.labels[indices],
            groups=self.groups[indices],
            sources=self.sources[indices],
            mpps=self.mpps[indices],
        )

    def class_counts(self) -> dict[str, int]:
        """Tiles per class name (unlabelled tiles are not counted)."""
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}

    def with_classes(self, class_names: Sequence[str]) -> TileSet:
        """The same tiles with labels re-indexed to ``class_names`` (unknown names raise)."""
        class_names = list(class_names)
        missing = sorted(set(self.class_names) - set(class_names))
        if missing:
            raise TrainingDataError(
                f"classes {missing} are not among the model's classes {class_names}; "
                "leave their tiles out or train a model that has them"
            )
        lookup = np.array([class_names.index(n) for n in self.class_names] + [UNLABELLED])
        return replace(self, class_names=class_names, labels=lookup[self.labels])

    def summary(self) -> dict:
        """Counts for a model card: tiles per class, per source file, groups, MPPs."""
        sources, per_source = np.unique(self.sources, return_counts=True)
        return {
            "tiles": len(self),
            "tiles_per_class": self.class_counts(),
            "tiles_per_source": {str(s): int(n) for s, n in zip(sources, per_source)},
            "groups": len(np.unique(self.groups)),
            "tile_size": self.tile_size,
            "mpps": sorted({round(float(m), 4) for m in self.mpps if not math.isnan(m)}),
            **self.info,
        }

    @classmethod
    def concatenate(cls, sets: Iterable[TileSet], class_names: Sequence[str] | None = None) -> TileSet:
        """Join tile sets; labels are mapped onto ``class_names`` (default: union in order seen)."""
        sets = list(sets)
        if class_names is None:
            class_names = []
            for s in sets:
                class_names += [n for n in s.class_names if n not in class_names]
        sets = [s.with_classes(class_names) for s in sets]
        sizes = {s.tile_size for s in sets}
        if len(sizes) > 1:
            raise ValueError(f"cannot join tile sets of different tile sizes {sorted(sizes)}")
        colors = {}
        for s in reversed(sets):  # the first source to colour a class gives its colour
            colors |= s.class_colors
        return cls(
            class_names=list(class_names),
            class_colors=colors,
            items=[item for s in sets for item in s.items],
            labels=np.concatenate([s.labels for s in sets]).astype(np.int64),
            groups=np.concatenate([s.groups for s in sets]).astype(str),
            sources=np.concatenate([s.sources for s in sets]).astype(str),
            mpps=np.concatenate([s.mpps for s in sets]).astype(np.float64),
            tile_size=sizes.pop(),
        )


def split_tiles(
    tiles: TileSet,
    val_fraction: float = 0.2,
    *,
    by: str = "group",
    seed: int = 0,
    stratify: bool = True,
) -> tuple[TileSet, TileSet]:
    """Split into (train, validation) by whole groups (``by="group"``) or source files (``"source"``).

    With ``stratify``, groups are drawn per majority class, and then moved where needed, so that
    every class keeps a group in training and every class with at least two groups one in
    validation too, where the groups allow it; a class of one group stays in training. No group
    ever has tiles on both sides.
    """
    keys = tiles.groups if by == "group" else tiles.sources
    if by not in ("group", "source"):
        raise ValueError(f"split by 'group' or 'source', not {by!r}")
    unique = np.unique(keys)
    rng = np.random.default_rng(seed)
    if stratify:
        majority = {}
        for key in unique:
            labels = tiles.labels[keys == key]
            majority[key] = (
                int(np.bincount(labels[labels >= 0]).argmax()) if (labels >= 0).any() else -1
            )
        strata = [[k for k in unique if majority[k] == c] for c in sorted(set(majority.values()))]
    else:
        strata = [list(unique)]
    val_keys = set()
    for members in strata:
        members = list(members)
        rng.shuffle(members)
        n_val = int(round(val_fraction * len(members)))
        val_keys.update(members[: min(max(n_val, 1), len(members) - 1)])
    if stratify:
        val_keys = _spread_mixed_groups(tiles.labels, keys, val_keys, rng)
    is_val = np.isin(keys, list(val_keys))
    return tiles.subset(np.flatnonzero(~is_val)), tiles.subset(np.flatnonzero(is_val))


def _spread_mixed_groups(labels: np.ndarray, keys: np.ndarray, val_keys: set, rng) -> set:
    """Move groups so that every class has a group in training, and each class with two or more
    groups one in validation too.

    Drawing by majority class does this for groups of one class; a class that is no group's
    majority can land on one side only. Training comes first: a class with no group there gets
    one back, taking another class's last validation group only if it must. A group then moves to
    validation only if no class loses its last training group.
    """
    labelled = labels >= 0
    holders = [set(np.unique(keys[labelled & (labels == c)])) for c in np.unique(labels[labelled])]
    all_keys = set(np.unique(keys))
    for own in sorted(holders, key=len):
        if own - val_keys:
            continue
        candidates = list(rng.permutation(sorted(own)))
        spare = [k for k in candidates if not any(h & val_keys == {k} for h in holders if k in h)]
        val_keys = val_keys - {(spare or candidates)[0]}
    for own in sorted(holders, key=len):
        if len(own) < 2 or own & val_keys:
            continue
        train_keys = all_keys - val_keys
        for key in rng.permutation(sorted(own)):
            if not any(h & train_keys == {key} for h in holders if key in h):
                val_keys = val_keys | {key}
                break
    return val_keys


def tiles_from_folder(
    root: str | Path,
    *,
    tile_size: int,
    class_names: Sequence[str] | None = None,
    class_map: dict[str, str] | None = None,
    mpp: float | None = None,
    mpps: Sequence[float] | None = None,
) -> TileSet:
    """A one-folder-per-class data set (NCT-CRC-HE-100K, BACH, MHIST, PCam exported as images).

    Class names are the folder names (sorted), or ``class_map[folder]`` when given (folders
    mapped to None are skipped). Each file is its own split group. Files are read on demand.

    With the images' ``mpp`` and the tiles' ``mpps``, each image gives one tile per MPP it covers:
    rescaled to it, its centre ``tile_size`` square. An image smaller than a tile at every one of
    them is resized whole (its centre square) and keeps the MPP that gives, with a warning; so
    is every image without ``mpp`` (its MPP unknown).
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingSourceError(
            f"{root}: not a folder; give a folder with one sub-folder per class"
        )
    files, labels, names = [], [], list(class_names or [])
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = class_map.get(folder.name, folder.name) if class_map else folder.name
        if name is None:
            continue
        if name not in names:
            if class_names is not None:
                continue
            names.append(name)
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(names.index(name))
    if not files:
        raise FileNotFoundError(
            f"{root}: no images in class sub-folders ({', '.join(IMAGE_SUFFIXES)})"
        )
    items, tile_labels, tile_files, tile_mpps, whole = [], [], [], [], []
    for path, label in zip(files, labels):
        if mpp is None:
            tiles = [(FolderImage(path), math.nan)]
        else:
            side = min(image_size(path)) * mpp  # µm
            tiles = [(FolderImage(path, mpp / m), m) for m in mpps or () if side >= tile_size * m]
            if not tiles:
                tiles = [(FolderImage(path), side / tile_size)]
                whole.append(path)
        for item, tile_mpp in tiles:
            items.append(item)
            tile_labels.append(label)
            tile_files.append(str(path.relative_to(root)))
            tile_mpps.append(tile_mpp)
    if whole and mpps:
        import warnings

        warnings.warn(
            f"{root}: {len(whole)} of {len(files)} images (e.g. {whole[0].name}) are smaller than "
            f"a {tile_size} px tile at {', '.join(f'{m:g}' for m in mpps)} µm/px; they are "
            "resized whole, to the MPP their size gives",
            stacklevel=2,
        )
    groups = np.array(tile_files)
    return TileSet(
        class_names=names,
        items=items,
        labels=np.array(tile_labels, dtype=np.int64),
        groups=groups,
        sources=groups,
        mpps=np.array(tile_mpps, dtype=np.float64),
        tile_size=tile_size,
    )


def _grid(bounds: tuple[float, float, float, float], size: float, stride: float) -> Iterator[tuple[float, float]]:
    minx, miny, maxx, maxy = bounds
    for y in np.arange(miny, maxy - size + 1, stride):
        for x in np.arange(minx, maxx - size + 1, stride):
            yield float(x), float(y)


def _box_reader(image):
    """(l0_x, l0_y, l0_size, out_size) -> uint8 tile, for a Slide or an in-memory (y, x, 3) array."""
    if isinstance(image, np.ndarray):
        def read(x, y, size, out):
            x, y, size = int(round(x)), int(round(y)), int(round(size))
            return resize(np.ascontiguousarray(image[y : y + size, x : x + size, :3]), out)
    else:
        def read(x, y, size, out):
            level = image.best_level_for_downsample(size / out)
            ds = image.level_downsamples[level]
            side = max(1, int(round(size / ds)))
            tile = np.asarray(image.read_region(level, int(round(y)), int(round(x)), side, side))
            return resize(np.ascontiguousarray(tile[..., :3]).astype(np.uint8), out)
    return read


def cut_tiles(
    image,
    *,
    source: str,
    source_mpp: float,
    tile_size: int,
    mpps: Sequence[float],
    regions: Sequence[tuple] | None = None,
    class_names: Sequence[str] = (),
    stride_fraction: float = 1.0,
    min_coverage: float = 0.5,
    min_tissue: float = 0.0,
    max_tissue: float = 1.0,
    max_tiles_per_region: int | None = None,
    blocks: int = 1,
    seed: int = 0,
) -> TileSet:
    """Cut tiles of ``tile_size`` px at each of ``mpps`` from a slide or an image array.

    ``regions`` is a list of (shapely geometry in level-0 px, class name, group id); without it
    the whole image is one unlabelled region, split into ``blocks`` x ``blocks`` groups: a split
    by region, so that neighbouring tiles stay on one side. An image too small for that many
    blocks that each hold a tile (at the finest of ``mpps``) gets as many as do, down to one
    block for an image of one tile. A tile is kept when the region covers ``min_coverage`` of it
    and its tissue fraction lies in [``min_tissue``, ``max_tissue``]. ``max_tiles_per_region``
    samples that many per region and MPP.
    """
    from shapely.geometry import box

    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
    else:
        width, height = image.dimensions
    if regions is None:
        finest = min(tile_size * mpp / source_mpp for mpp in mpps)
        blocks = max(1, min(blocks, int(min(width, height) // finest)))
        step_x, step_y = width / blocks, height / blocks
        regions = [
            (
                box(bx * step_x, by * step_y, (bx + 1) * step_x, (by + 1) * step_y),
                None,
                f"{source}#block{by * blocks + bx}",
            )
            for by in range(blocks)
            for bx in range(blocks)
        ]
    class_names = list(class_names)
    read = _box_reader(image)
    rng = np.random.default_rng(seed)
    items, labels, groups, tile_mpps = [], [], [], []
    for geometry, class_name, group in regions:
        label = UNLABELLED if class_name is None else class_names.index(class_name)
        for mpp in mpps:
            size = tile_size * mpp / source_mpp
            if size > min(width, height):
                continue
            minx, miny, maxx, maxy = geometry.bounds
            bounds = (max(minx, 0), max(miny, 0), min(maxx, width), min(maxy, height))
            boxes = [
                (x, y)
                for x, y in _grid(bounds, size, size * stride_fraction)
                if geometry.intersection(box(x, y, x + size, y + size)).area
                >= min_coverage * size * size
            ]
            if max_tiles_per_region is not None and len(boxes) > max_tiles_per_region:
                boxes = [
                    boxes[i]
                    for i in sorted(rng.choice(len(boxes), max_tiles_per_region, replace=False))
                ]
            for x, y in boxes:
                tile = read(x, y, size, tile_size)
                if min_tissue <= tissue_fraction(tile) <= max_tissue:
                    items.append(tile)
                    labels.append(label)
                    groups.append(group)
                    tile_mpps.append(mpp)
    return TileSet(
        class_names=class_names,
        items=items,
        labels=np.array(labels, dtype=np.int64),
        groups=np.array(groups, dtype=str),
        sources=np.full(len(items), source, dtype=object).astype(str),
        mpps=np.array(tile_mpps, dtype=np.float64),
        tile_size=tile_size,
    )


def tiles_from_slide(
    slide,
    annotations=None,
    *,
    tile_size: int,
    mpps: Sequence[float] = (0.5,),
    class_names: Sequence[str] | None = None,
    split_by: str = "region",
    **kwargs,
) -> TileSet:
    """Tiles from a slide (a path or an open Slide) inside labelled regions, at one or several MPPs.

    ``annotations`` is a list of ``Annotation`` (or a QuPath GeoJSON path); only polygons with a
    class count. Without annotations every tissue tile is taken, unlabelled, for pretraining
    (``min_tissue`` defaults to 0.3 then). ``split_by="region"`` makes each annotation a group,
    ``"slide"`` the whole slide one group. Other keywords go to :func:`cut_tiles`.
    """
    from napari_ssmamba.slide import open_slide

    if isinstance(slide, (str, Path)):
        slide = open_slide(slide)
    source_mpp = float(np.mean(slide.require_mpp(
        "training tiles cannot be cut at their MPP",
        "an mpp key on its data source in the config (mpp: 0.5), Plugins > SSMamba WSI > Settings "
        "> Set MPP in napari before Retrain, or open_slide(path, mpp=(y, x)) in Python",
    )))
    source = Path(slide.path).name
    if annotations is None:
        kwargs.setdefault("min_tissue", 0.3)
        tiles = cut_tiles(
            slide, source=source, source_mpp=source_mpp, tile_size=tile_size, mpps=mpps, **kwargs
        )
        if not len(tiles):
            width, height = slide.dimensions
            raise _no_tile_error(slide.path, width, height, source_mpp, tile_size, mpps, **kwargs)
        return tiles
    where = annotations if isinstance(annotations, (str, Path)) else slide.path
    if isinstance(annotations, (str, Path)):
        from napari_ssmamba.annotations import read_geojson

        annotations = read_geojson(annotations)
    polygons = [
        a
        for a in annotations
        if a.class_name and a.geometry.geom_type in ("Polygon", "MultiPolygon")
    ]
    names = (
        list(class_names) if class_names is not None else sorted({a.class_name for a in polygons})
    )
    regions = [
        (a.geometry, a.class_name, source if split_by == "slide" else f"{source}#{a.id}")
        for a in polygons
        if a.class_name in names
    ]
    if not regions:
        raise TrainingDataError(
            f"{where}: no polygon with a class among {names}; draw regions and give them a class"
        )
    tiles = cut_tiles(
        slide,
        source=source,
        source_mpp=source_mpp,
        tile_size=tile_size,
        mpps=mpps,
        regions=regions,
        class_names=names,
        **kwargs,
    )
    tiles.class_colors = {a.class_name: tuple(a.color) for a in polygons if a.color is not None}
    counts = tiles.class_counts()
    empty = [name for name in dict.fromkeys(r[1] for r in regions) if not counts[name]]
    if empty:
        largest = {}  # per class, the region extent with the longest short side
        for geometry, name, _ in regions:
            minx, miny, maxx, maxy = geometry.bounds
            largest[name] = max(largest.get(name, (0, 0)), (maxx - minx, maxy - miny), key=min)
        spans = ", ".join(
            f"{n!r} (largest {largest[n][0]:.0f} x {largest[n][1]:.0f} px)" for n in empty
        )
        tile, side = _tile_phrase(tile_size, mpps, source_mpp)
        raise TrainingDataError(
            f"{slide.path}: the regions of class {spans} give no {tile}; a tile covers "
            f"{side} x {side} px at {source_mpp:g} µm/px, {kwargs.get('min_coverage', 0.5):.0%} "
            "of it inside a region: draw larger regions or use a smaller tile size or MPP"
        )
    return tiles


def _tile_phrase(tile_size: int, mpps: Sequence[float], source_mpp: float) -> tuple[str, int]:
    """("224 px tile at 0.5 µm/px", source px across the smallest of those tiles), for messages."""
    at = ", ".join(f"{mpp:g}" for mpp in mpps)
    return f"{tile_size} px tile at {at} µm/px", math.ceil(min(mpps) * tile_size / source_mpp)


def _no_tile_error(
    path,
    width: int,
    height: int,
    source_mpp: float,
    tile_size: int,
    mpps: Sequence[float],
    *,
    min_tissue: float = 0.0,
    max_tissue: float = 1.0,
    **_cut_options,
) -> TrainingDataError:
    """Why a whole image or slide of ``width`` x ``height`` px gives no tile, and the fix."""
    tile, side = _tile_phrase(tile_size, mpps, source_mpp)
    if side > min(width, height):
        return TrainingDataError(
            f"{path} gives no {tile}: it is {width} x {height} px at {source_mpp:g} µm/px and a "
            f"tile needs {side} x {side} px; use a smaller tile size or MPP, or a larger image"
        )
    return TrainingDataError(
        f"{path} gives no {tile}: no tile has a tissue fraction in [{min_tissue:g}, "
        f"{max_tissue:g}]; widen min_tissue / max_tissue of this source"
    )


def tiles_from_image(
    path: str | Path,
    class_name: str | None = None,
    *,
    source_mpp: float,
    tile_size: int,
    mpps: Sequence[float] = (0.5,),
    blocks: int = 2,
    **kwargs,
) -> TileSet:
    """Tiles from a plain image file (PNG/TIFF region) of one class, split into blocks x blocks groups.

    An image too small for them gets fewer blocks (see :func:`cut_tiles`); one that gives no tile
    at all raises :class:`TrainingDataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingSourceError(f"{path}: no such image; correct the path of this data source")
    image = read_image(path)
    tiles = cut_tiles(
        image,
        source=path.name,
        source_mpp=source_mpp,
        tile_size=tile_size,
        mpps=mpps,
        blocks=blocks,
        **kwargs,
    )
    if not len(tiles):
        height, width = image.shape[:2]
        raise _no_tile_error(path, width, height, source_mpp, tile_size, mpps, **kwargs)
    if class_name is not None:
        tiles = replace(
            tiles, class_names=[class_name], labels=np.zeros(len(tiles), dtype=np.int64)
        )
    return tiles


class EpochSampler:
    """Yields ``(index, sample_seed)`` for one rank; the same global order for any number of ranks.

    Each epoch draws a permutation (or, with ``weights``, a class-balanced draw with replacement
    as ``WeightedRandomSampler`` does) from ``seed`` and the epoch; rank ``r`` of ``R`` takes
    positions ``r, r + R, ...``, so a per-rank batch of ``b`` on ``R`` ranks covers exactly the
    positions that one process with batch ``R * b`` covers (the ``DistributedSampler`` layout).
    The sample seed fixes the augmentation of each position, independent of ranks and workers.
    """

    def __init__(self, num_items: int, *, weights: Sequence[float] | None = None, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, num_samples: int | None = None):
        self.num_items = num_items
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.num_samples = num_items if num_samples is None else num_samples
        self.total_size = self.num_samples // num_replicas * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total_size // self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            # draw as many as one process would, then trim: the same draws for any rank count
            order = torch.multinomial(torch.as_tensor(self.weights), self.num_samples, replacement=True,
                                      generator=generator)[: self.total_size]
        elif self.shuffle:
            order = torch.randperm(self.num_items, generator=generator)[: self.total_size]
        else:
            order = torch.arange(self.total_size)
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for position in range(self.rank, self.total_size, self.num_replicas):
            yield int(order[position]), (base + position) % (2**63 - 1)


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-tile weights inversely proportional to its class's tile count."""
    counts = np.bincount(labels[labels >= 0])
    weights = np.zeros(len(labels))
    labelled = labels >= 0
    weights[labelled] = 1.0 / counts[labels[labelled]]
    return weights


class TileDataset:
    """A torch Dataset of normalised (3, T, T) tensors and labels from a :class:`TileSet`.

    Indexing with ``(index, sample_seed)`` (as :class:`EpochSampler` yields) applies ``augment``
    with a generator seeded by ``sample_seed``; a plain index returns the tile unaugmented.
    """

    def __init__(self, tiles: TileSet, *, mean: Sequence[float], std: Sequence[float], augment=None):
        import torch

        self.tiles = tiles
        self.augment = augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, key):
        import torch

        index, seed = key if isinstance(key, tuple) else (key, None)
        image = torch.from_numpy(np.array(self.tiles.image(index))).permute(2, 0, 1)
        image = image.float() / 255.0
        if self.augment is not None and seed is not None:
            image = self.augment(image, torch.Generator().manual_seed(int(seed)))
        image = (image - self.mean) / self.std
        return image, int(self.tiles.labels[index])


def tiles_from_sources(
    sources: Sequence[dict],
    *,
    tile_size: int,
    mpps: Sequence[float],
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> TileSet:
    """Build one TileSet from the source mappings of a :class:`DataConfig` (see there)."""
    sets = []
    for spec in sources:
        spec = dict(spec)
        spec_mpps = spec.pop("mpps", mpps)
        if "folder" in spec:
            sets.append(
                tiles_from_folder(
                    spec.pop("folder"),
                    tile_size=tile_size,
                    class_map=spec.pop("class_map", None),
                    mpp=spec.pop("mpp", None),
                    mpps=spec_mpps,
                )
            )
        elif "slide" in spec:
            from napari_ssmamba.slide import open_slide

            mpp = spec.pop("mpp", None)
            if isinstance(mpp, (int, float)):
                mpp = (float(mpp), float(mpp))
            slide = open_slide(spec.pop("slide"), mpp=mpp)
            sets.append(
                tiles_from_slide(
                    slide,
                    spec.pop("annotations", None),
                    tile_size=tile_size,
                    mpps=spec_mpps,
                    seed=seed,
                    **spec,
                )
            )
        elif "image" in spec:
            if "mpp" not in spec:
                raise TrainingDataError(
                    f"data source {spec} has no mpp; add the image's µm/px, e.g. mpp: 0.5"
                )
            sets.append(
                tiles_from_image(
                    spec.pop("image"),
                    spec.pop("class", None),
                    source_mpp=float(spec.pop("mpp")),
                    tile_size=tile_size,
                    mpps=spec_mpps,
                    seed=seed,
                    **spec,
                )
            )
        else:
            raise TrainingDataError(
                f"data source {spec} needs one of the keys 'folder', 'slide' or 'image'"
            )
    if not sets:
        raise TrainingDataError("no data sources given; add data.sources to the config")
    return TileSet.concatenate(sets, class_names)
