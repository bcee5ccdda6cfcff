"""Classify the ROIs (or the whole tissue) of a slide: ``classify_slide`` and the file-to-files ``run_slide``.

ROI class rule: the mean of its tiles' class probabilities, each tile weighted by the share of the
tile inside the ROI times its tissue fraction; the class is the argmax of that mean.
"""

from __future__ import annotations

import collections
import hashlib
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ssmamba.errors import SlideError
from napari_ssmamba.inference.heatmap import Grid, cells_inside, stitch_maps, stitch_values
from napari_ssmamba.inference.result import ClassificationResult, RoiResult, RoiTiles
from napari_ssmamba.inference.tiling import (
    MIN_ROI_FRACTION,
    MIN_TISSUE_FRACTION,
    boxes_to_polygons,
    lies_outside,
    plan_tiles,
    tile_geometry,
)
from napari_ssmamba.progress import no_progress

#: why classification needs a slide's pixel size, for the message when it has none
NEEDS_MPP = "tiles cannot be cut at the model's resolution"
#: the attention map's long side is kept at or below this many cells
MAX_ATTENTION_CELLS = 4096


@dataclass
class ClassificationCache:
    """Per-ROI tile predictions and per-slide tissue masks kept between runs (the GUI holds one).

    An ROI is looked up by its geometry's WKB, the model's fingerprint and the tiling parameters, so
    re-running after moving or adding an ROI predicts only the ROIs that changed.
    """

    rois: dict = field(default_factory=dict)
    tissue: dict = field(default_factory=dict)
    model_fingerprints: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)

    def fingerprint(self, model, card) -> str:
        """The model's fingerprint, computed once per model object."""
        if model not in self.model_fingerprints:
            self.model_fingerprints[model] = model_fingerprint(model, card)
        return self.model_fingerprints[model]

    def tissue_of(self, slide):
        """The slide's tissue mask, detected once per slide."""
        from napari_ssmamba.inference.tissue import detect_tissue

        key = _slide_key(slide)
        if key not in self.tissue:
            self.tissue[key] = detect_tissue(slide)
        return self.tissue[key]


def warm_up(
    slide,
    model,
    card,
    device: str = "auto",
    cache: ClassificationCache | None = None,
    attention: bool = True,
) -> dict[str, float]:
    """Do ahead what the first :func:`classify_slide` of ``slide`` with ``model`` in a process
    would do besides classifying: move the model to ``device`` and capture its CUDA graphs
    (:func:`~napari_ssmamba.inference.predict.warm_up_model`; the first time several seconds on a
    GPU), set up the slide's tile reader there (on CUDA: nvJPEG, checked against the slide reader,
    and the gather kernel), and with a ``cache``, fingerprint the model and detect the slide's
    tissue. The Classify widget does this in the background while the user draws ROIs. Returns
    the seconds each step took."""
    from napari_ssmamba.inference.jpeg_batches import JpegBatchReader, tile_reader_for
    from napari_ssmamba.inference.predict import resolve_device, warm_up_model

    seconds = {}
    start = time.perf_counter()
    warm_up_model(model, card, device, attention)
    seconds["model_s"] = time.perf_counter() - start
    start = time.perf_counter()
    _check_rgb(slide)
    geometry = tile_geometry(
        slide.require_mpp(NEEDS_MPP), slide.level_downsamples, card.tile_size, card.mpp
    )
    reader = tile_reader_for(slide, geometry, resolve_device(device))
    if isinstance(reader, JpegBatchReader):  # one tile, for what the first batch sets up
        reader(np.array([[0, 0, geometry.tile_l0, geometry.tile_l0]]))
    seconds["tile_reader_s"] = time.perf_counter() - start
    if cache is not None:
        start = time.perf_counter()
        cache.fingerprint(model, card)
        seconds["fingerprint_s"] = time.perf_counter() - start
        start = time.perf_counter()
        cache.tissue_of(slide)
        seconds["tissue_s"] = time.perf_counter() - start
    return seconds


def model_fingerprint(model, card) -> str:
    """sha256 over the model card and the model's parameters and buffers."""
    from napari_ssmamba.export.record import card_sha256

    digest = hashlib.sha256(card_sha256(card).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _as_geometry(roi):
    return getattr(roi, "geometry", roi)


def _slide_key(slide) -> str:
    return str(getattr(slide, "path", id(slide)))


def _check_rgb(slide) -> None:
    if not getattr(slide, "is_rgb", True):
        raise SlideError(
            f"{slide.path}: SSMamba classifies RGB brightfield slides (H&E, IHC); this slide has "
            f"{getattr(slide, 'channel_count', 'several')} channels. Open an RGB slide."
        )


def classify_slide(
    slide,
    model,
    card,
    rois=None,
    stride: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress=None,
    cancel=None,
    attention: bool = True,
    min_roi_fraction: float = MIN_ROI_FRACTION,
    min_tissue_fraction: float = MIN_TISSUE_FRACTION,
    cache: ClassificationCache | None = None,
    decoder: str = "auto",
    cuda_graphs: bool = True,
) -> ClassificationResult:
    """Classify ``rois`` (Annotations or shapely geometries in level-0 px, or a QuPath GeoJSON
    path, kept as :func:`load_rois` says; None: the whole tissue).

    ``stride`` is in model pixels (default: the tile size, no overlap). ``progress`` and ``cancel``
    follow :mod:`napari_ssmamba.progress`. With a ``cache``, ROIs seen before with the same model and
    parameters are not predicted again. ``decoder`` picks how tiles are decoded: "auto" (on CUDA
    nvJPEG where the slide allows, else libjpeg in batches; the CPU reader on the CPU), "cpu",
    "nvjpeg" or "libjpeg" (see
    :func:`~napari_ssmamba.inference.jpeg_batches.tile_reader_for`). On CUDA the model runs from
    CUDA graphs unless ``cuda_graphs`` is False.
    """
    from napari_ssmamba.inference.jpeg_batches import JpegBatchReader, tile_reader_for
    from napari_ssmamba.inference.predict import predict_tiles, resolve_device
    from napari_ssmamba.inference.tissue import detect_tissue

    progress = progress or no_progress
    timings = {}
    start = time.perf_counter()
    _check_rgb(slide)
    mpp = slide.require_mpp(NEEDS_MPP)
    geometry = tile_geometry(mpp, slide.level_downsamples, card.tile_size, card.mpp, stride)
    slide_wh = tuple(int(v) for v in slide.dimensions)
    slide_key = _slide_key(slide)

    progress(0, 1, "Detecting tissue")
    tissue = cache.tissue_of(slide) if cache is not None else detect_tissue(slide)
    timings["tissue_s"] = time.perf_counter() - start

    whole_tissue = rois is None
    roi_list = [] if whole_tissue else load_rois(rois)
    geometries = [_as_geometry(r) for r in roi_list]
    outside = sum(lies_outside(g, slide_wh) for g in geometries)
    if outside:
        warnings.warn(
            f"{getattr(slide, 'path', 'the slide')}: {outside} of {len(geometries)} ROIs lie "
            f"wholly outside the slide ({slide_wh[0]} x {slide_wh[1]} px); were they drawn on "
            "another image?",
            stacklevel=2,
        )
    params_key = f"{slide_key}|{geometry}|{min_roi_fraction}|{min_tissue_fraction}|{attention}"
    model_key = cache.fingerprint(model, card) if cache is not None and not whole_tissue else ""
    keys = [
        hashlib.sha256(g.wkb + params_key.encode() + model_key.encode()).hexdigest()
        for g in geometries
    ]
    cached = {k: cache.rois[k] for k in keys if cache is not None and k in cache.rois}
    todo = [i for i, k in enumerate(keys) if k not in cached]

    plan = plan_tiles(
        geometry,
        slide_wh,
        tissue=tissue,
        rois=None if whole_tissue else [geometries[i] for i in todo],
        min_roi_fraction=min_roi_fraction,
        min_tissue_fraction=min_tissue_fraction,
    )
    t_predict = time.perf_counter()
    torch_device = resolve_device(device)
    reader = tile_reader_for(slide, geometry, torch_device, decoder) if len(plan.boxes_l0) else None
    batched = isinstance(reader, JpegBatchReader)
    predictions = predict_tiles(
        reader,
        plan.boxes_l0,
        model,
        card,
        device=device,
        batch_size=batch_size,
        attention=attention,
        progress=progress,
        cancel=cancel,
        batched=batched,
        cuda_graphs=cuda_graphs,
    )
    timings["predict_s"] = time.perf_counter() - t_predict
    new_tiles = _split_by_roi(plan, predictions)

    if whole_tissue:
        roi_results = [
            RoiResult.from_tiles(
                _union_of_tiles(new_tiles[0].boxes_l0, geometry),
                new_tiles[0],
                card.class_names,
            )
        ]
    else:
        for i, tiles in zip(todo, new_tiles):
            cached[keys[i]] = tiles
            if cache is not None:
                cache.rois[keys[i]] = tiles
        roi_results = [
            RoiResult.from_tiles(g, cached[k], card.class_names, annotation=r)
            for g, k, r in zip(geometries, keys, roi_list)
        ]

    t_maps = time.perf_counter()
    result = _assemble(slide, mpp, card, geometry, roi_results, whole_tissue, attention)
    timings["maps_s"] = time.perf_counter() - t_maps
    timings["total_s"] = time.perf_counter() - start
    result.timings = timings
    result.parameters = {
        "stride_model_px": int(stride) if stride is not None else int(card.tile_size),
        "tile_size": int(card.tile_size),
        "model_mpp": float(card.mpp),
        "tile_l0": geometry.tile_l0,
        "stride_l0": geometry.stride_l0,
        "level": geometry.level,
        "level_downsample": geometry.level_downsample,
        "min_roi_fraction": min_roi_fraction,
        "min_tissue_fraction": min_tissue_fraction,
        "device": str(torch_device),  # what "auto" became
        "batch_size": predictions.batch_size,
        "tile_decoder": reader.decoder if batched else "cpu",
        "cuda_graphs": predictions.cuda_graphs,
        "rois": "whole tissue" if whole_tissue else len(roi_list),
        "rois_predicted": len(todo) if not whole_tissue else 1,
    }
    progress(1, 1, "Done")
    return result


def _split_by_roi(plan, predictions) -> list[RoiTiles]:
    members = plan.members
    out = []
    for roi_index in range(plan.n_rois):
        rows = members[members[:, 1] == roi_index]
        tile_index = rows[:, 0].astype(np.int64)
        out.append(
            RoiTiles(
                boxes_l0=plan.boxes_l0[tile_index],
                probabilities=predictions.probabilities[tile_index],
                weights=rows[:, 2].astype(np.float64),
                tissue_fraction=plan.tissue_fraction[tile_index],
                attention=None
                if predictions.attention is None
                else predictions.attention[tile_index],
                n_background=int(plan.background_per_roi[roi_index]),
            )
        )
    return out


def _union_of_tiles(boxes_l0: np.ndarray, geometry):
    """The region the tiles cover. Where the stride divides the tile, each tile is cut into
    stride cells: cells only meet edge to edge, and GEOS unites such a coverage some 20x faster
    than overlapping boxes."""
    import shapely

    if len(boxes_l0) == 0:
        return shapely.Polygon()
    x0, y0 = boxes_l0[:, 0], boxes_l0[:, 1]
    cell, (per_tile, rest) = geometry.stride_l0, divmod(geometry.tile_l0, geometry.stride_l0)
    if rest:
        return shapely.union_all(boxes_to_polygons(boxes_l0))
    offsets = np.arange(per_tile) * cell
    cells = np.stack(
        np.broadcast_arrays(
            x0[:, None, None] + offsets[None, None, :], y0[:, None, None] + offsets[None, :, None]
        ),
        axis=-1,
    ).reshape(-1, 2)
    cx, cy = np.unique(cells, axis=0).T
    return shapely.coverage_union_all(shapely.box(cx, cy, cx + cell, cy + cell))


def _assemble(
    slide, mpp, card, geometry, roi_results, whole_tissue, attention
) -> ClassificationResult:
    num_classes = len(card.class_names)
    parts = [r.tiles for r in roi_results if r.tiles is not None and len(r.tiles.boxes_l0)]
    if parts:
        boxes = np.concatenate([p.boxes_l0 for p in parts])
        probs = np.concatenate([p.probabilities for p in parts])
        tissue = np.concatenate([p.tissue_fraction for p in parts])
        maps = (
            np.concatenate([p.attention for p in parts])
            if attention and all(p.attention is not None for p in parts)
            else None
        )
        boxes, first = np.unique(boxes, axis=0, return_index=True)
        probs, tissue = probs[first], tissue[first]
        maps = None if maps is None else maps[first]
    else:
        boxes = np.zeros((0, 4), np.int64)
        probs = np.zeros((0, num_classes), np.float32)
        tissue = np.zeros(0, np.float32)
        maps = None

    slide_wh = tuple(int(v) for v in slide.dimensions)
    regions = None if whole_tissue else [r.geometry for r in roi_results]
    grid = Grid.covering(boxes, geometry.stride_l0)
    heatmaps, count = (
        stitch_values(grid, boxes, probs)
        if len(boxes)
        else (
            np.zeros((num_classes, 0, 0), np.float32),
            np.zeros((0, 0), np.int32),
        )
    )
    if len(boxes):
        inside = _cells_shown(grid, slide_wh, regions)
        count = np.where(inside, count, 0)
        heatmaps = np.where(inside[None], heatmaps, 0.0).astype(np.float32)
    labels = np.where(count > 0, heatmaps.argmax(0) + 1, 0).astype(np.uint8)

    attention_grid, attention_map = None, None
    if maps is not None and len(boxes):
        from napari_ssmamba.inference.predict import ATTENTION_SIZE

        per_stride = max(int(ATTENTION_SIZE * geometry.stride_l0 / geometry.tile_l0), 1)
        fit = max(int(MAX_ATTENTION_CELLS / max(grid.shape_hw)), 1)
        cells_per_stride = max(min(per_stride, fit), 1)
        attention_grid = Grid.covering(boxes, geometry.stride_l0 / cells_per_stride)
        attention_map = stitch_maps(attention_grid, boxes, maps)
        inside = _cells_shown(attention_grid, slide_wh, regions)
        attention_map = np.where(inside, attention_map, 0.0).astype(np.float32)

    return ClassificationResult(
        slide_path=Path(slide.path) if getattr(slide, "path", None) else None,
        slide_dimensions_wh=slide_wh,
        mpp_yx=mpp,
        card=card,
        geometry=geometry,
        tile_boxes_l0=boxes.astype(np.int64),
        tile_probabilities=probs.astype(np.float32),
        tile_tissue_fraction=tissue.astype(np.float32),
        rois=roi_results,
        whole_tissue=whole_tissue,
        heatmap_grid=grid,
        heatmaps=heatmaps.astype(np.float32),
        labels=labels,
        attention_grid=attention_grid,
        attention=attention_map,
    )


def _cells_shown(grid: Grid, slide_wh, regions) -> np.ndarray:
    """Cells that start on the slide (a tile at its right or bottom edge sticks out) and, when
    ``regions`` are given, whose centres lie inside one of them."""
    ys, xs = grid.cell_centres_l0()
    half = grid.cell_l0 / 2
    shown = (xs - half < slide_wh[0]) & (ys - half < slide_wh[1])
    if regions is not None:
        shown &= cells_inside(grid, regions)
    return shown


def load_rois(rois):
    """ROIs from a GeoJSON path, a list of Annotations/geometries, or None (whole tissue).

    Only annotations with an area are ROIs: QuPath detections (cells, tiles, TMA cores), points
    and lines are left out, with a warning that counts them.
    """
    if rois is None:
        return None
    source = "the ROIs"
    if isinstance(rois, (str, Path)):
        from napari_ssmamba.annotations import read_geojson

        rois, source = read_geojson(rois), str(rois)
    kept, left_out = [], collections.Counter()
    for roi in rois:
        kind = getattr(roi, "object_type", "annotation")
        if kind != "annotation":
            left_out[f"{kind} objects"] += 1
        elif not _as_geometry(roi).area > 0:
            left_out["points, lines or empty shapes"] += 1
        else:
            kept.append(roi)
    if left_out:
        counts = ", ".join(f"{n} {what}" for what, n in left_out.items())
        warnings.warn(
            f"{source}: {counts} left out; only annotations with an area are classified.",
            stacklevel=2,
        )
    return kept


def run_slide(
    slide_path,
    model,
    card,
    out_dir,
    rois=None,
    mpp=None,
    device: str = "auto",
    stride: int | None = None,
    batch_size: int | None = None,
    progress=None,
    cancel=None,
    run_info: dict | None = None,
    attention: bool = False,
    decoder: str = "auto",
) -> dict:
    """Open ``slide_path``, classify (whole tissue when no ROIs), write the exports; return the run record.

    ``rois`` is None, a list of Annotations or geometries, or a QuPath GeoJSON path. ``mpp`` (µm
    per pixel, one number or (y, x)) is used only when the slide records none. Outputs are
    written by :func:`napari_ssmamba.export.write_outputs`; the run record is written last. The
    exports hold no attention map, so it is not computed unless ``attention`` is set. ``decoder``
    is passed to :func:`classify_slide`.
    """
    import datetime
    import json

    from napari_ssmamba.export import output_paths, write_outputs
    from napari_ssmamba.slide import open_slide
    from napari_ssmamba.slide.slide import normalize_mpp

    started = datetime.datetime.now(datetime.timezone.utc).isoformat()
    # records name files wherever the command ran; a link keeps its name (outputs are named after it)
    slide_path = Path(slide_path).absolute()
    if isinstance(rois, (str, Path)):
        rois = Path(rois).absolute()
    with open_slide(slide_path) as slide:
        if slide.mpp is None and mpp is not None:
            slide.mpp = normalize_mpp(mpp)
        result = classify_slide(
            slide,
            model,
            card,
            rois=rois,
            stride=stride,
            device=device,
            batch_size=batch_size,
            progress=progress,
            cancel=cancel,
            attention=attention,
            decoder=decoder,
        )
        info = {
            "slide": str(slide_path),
            "roi_file": str(rois) if isinstance(rois, (str, Path)) else None,
            "mpp_if_missing": list(mpp) if isinstance(mpp, (tuple, list)) else mpp,
            "started": started,
        }
        info.update(run_info or {})
        write_outputs(result, out_dir, run_info=info, slide=slide)
    with open(output_paths(out_dir, result.stem)["run"], encoding="utf-8") as fh:
        return json.load(fh)
