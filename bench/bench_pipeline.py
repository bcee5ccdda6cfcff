"""Throughput of the classification pipeline against the model alone and a plain baseline.

For an ROI (default 2 mm x 2 mm, centred on the tissue) and, optionally, the whole slide:

- pipeline:   ``classify_slide`` end to end; tiles/s over its prediction phase (reading, decoding,
              normalising and the model, overlapped), and over the whole call (tissue mask, tiling,
              maps). On CUDA also: tiles decoded by the CPU reader threads box by box
              (``decoder="cpu"``) or JPEG tile by JPEG tile in batches (``"libjpeg"``, what
              Aperio slides get) instead of nvJPEG on the GPU (the default); the model run
              eagerly instead of from CUDA graphs (``_eager``);
- model only: the same model on the same tiles, read beforehand: from pinned host memory (what the
              pipeline replaces) and, on CUDA, already on the GPU (the strict ceiling); on CUDA
              from CUDA graphs as the pipeline runs it, and eagerly (``_eager``);
- baseline:   ``openslide.read_region`` + PIL resize in a ``torch.utils.data.DataLoader``, CPU
              normalisation, then the same model;
- click to result (CUDA): what the Classify widget's worker does after Run, without napari: load
              the checkpoint (first Run only: the widget keeps its models), classify the ROI with
              LPR attention maps; the first Run also captures the CUDA graphs;
- with --gui: seconds from clicking Run in the Classify widget to the class map on the canvas
              (the widget also computes the LPR attention map), split into the worker's part and
              napari's (adding the layers and drawing them).

All three run the same model with the same batch size in one process, one after the other.

    python bench/bench_pipeline.py --slide SLIDE.svs --out results.json          # GPU: ssmamba_base
    python bench/bench_pipeline.py --slide SLIDE.svs --out results.json --cpu    # CPU: ssmamba_tiny, 1 mm²
    xvfb-run -a python bench/bench_pipeline.py ... --gui   # also: click Run -> heatmap drawn in napari
    python bench/bench_pipeline.py --render bench/results/pipeline_*.json (a markdown table for docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_model(arch: str):
    """``arch`` with seeded random weights and a three-class untrained card: the benchmarks' model."""
    import torch

    from napari_ssmamba.model import ModelCard, create_model

    torch.manual_seed(0)
    card = ModelCard(
        arch=arch,
        class_names=["a", "b", "c"],
        class_colors=[(255, 0, 0), (0, 255, 0), (0, 0, 255)],
        untrained=True,
    )
    return create_model(arch, num_classes=3), card


def roi_around_tissue(slide, side_mm: float):
    """A square ROI of ``side_mm`` centred on the tissue's centre of mass, inside the slide."""
    import shapely

    from napari_ssmamba.inference import detect_tissue

    tissue = detect_tissue(slide)
    ys, xs = np.nonzero(tissue.mask)
    cy, cx = ys.mean() * tissue.downsample_yx[0], xs.mean() * tissue.downsample_yx[1]
    side_x, side_y = side_mm * 1000 / slide.mpp[1], side_mm * 1000 / slide.mpp[0]
    width, height = slide.dimensions
    x0 = min(max(cx - side_x / 2, 0), max(width - side_x, 0))
    y0 = min(max(cy - side_y / 2, 0), max(height - side_y, 0))
    return shapely.box(x0, y0, min(x0 + side_x, width), min(y0 + side_y, height))


def roi_and_whole_slide(slide, model, card, roi_mm: float, device="cuda") -> dict:
    """``classify_slide`` results (their tile plans) for an ``roi_mm`` ROI centred on the tissue
    and for the whole tissue, without attention maps, by case name (the ROI first)."""
    from napari_ssmamba.inference import classify_slide

    roi = roi_around_tissue(slide, roi_mm)
    return {
        f"roi_{roi_mm:g}mm": classify_slide(
            slide, model, card, rois=[roi], device=str(device), attention=False
        ),
        "whole_slide": classify_slide(slide, model, card, device=str(device), attention=False),
    }


def best_of(run, repeats: int, device) -> float:
    """Seconds of ``run()``: the best of ``repeats`` runs after a warm-up, the device synchronised
    before and after each."""
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def time_pipeline(
    slide,
    model,
    card,
    rois,
    device,
    batch_size,
    attention,
    decoder="auto",
    cuda_graphs=True,
):
    from napari_ssmamba.inference import classify_slide

    _sync(device)
    start = time.perf_counter()
    result = classify_slide(
        slide,
        model,
        card,
        rois=rois,
        device=str(device),
        batch_size=batch_size,
        attention=attention,
        decoder=decoder,
        cuda_graphs=cuda_graphs,
    )
    _sync(device)
    total = time.perf_counter() - start
    return result, total


def time_model_only(
    slide, model, card, result, device, batch_size, attention, on_device=False, cuda_graphs=True
):
    """The model on the result's tiles, read first into (pinned) host memory or onto the device.

    Timed in full batches and in the pipeline's batches (smaller first ones on CUDA); the faster
    counts. The CUDA graphs for the batch sizes are captured before the clock starts, as the
    pipeline does.
    """
    import torch

    from napari_ssmamba.inference import predict
    from napari_ssmamba.inference.predict import SlideTileReader, TileClassifier, batch_sizes

    reader = SlideTileReader(slide, result.geometry)
    tiles = torch.from_numpy(np.stack([reader(box) for box in result.tile_boxes_l0]))
    if device.type == "cuda":
        tiles = tiles.to(device) if on_device else tiles.pin_memory()
    first = predict.CUDA_FIRST_BATCH if device.type == "cuda" else None
    classify = TileClassifier(model, card, device, attention, cuda_graphs)
    seconds = []
    growth = predict.CUDA_BATCH_GROWTH
    for sizes in {
        tuple(batch_sizes(len(tiles), batch_size)),
        tuple(batch_sizes(len(tiles), batch_size, first, growth)),
    }:
        classify.prepare(sizes, tuple(tiles.shape[1:3]))
        _sync(device)
        start = time.perf_counter()
        done = 0
        for size in sizes:
            classify(tiles[done : done + size])
            done += size
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def time_reader_only(slide, result, device, batch_size, decoder):
    """The pipeline's tile reader alone (no model) over the result's tiles: decoding headroom."""
    import torch

    from napari_ssmamba.inference.jpeg_batches import JpegBatchReader, tile_reader_for

    reader = tile_reader_for(slide, result.geometry, device, decoder)
    boxes = result.tile_boxes_l0
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(boxes), batch_size):
        if isinstance(reader, JpegBatchReader):
            reader(boxes[i : i + batch_size])
        else:
            torch.from_numpy(np.stack([reader(box) for box in boxes[i : i + batch_size]]))
    _sync(device)
    return time.perf_counter() - start


def decoder_differences(slide_paths, device, tiles=24, seed=0) -> dict:
    """Per slide and nvJPEG decoder: |nvJPEG - slide reader| over JPEG tiles of the model's level."""
    from napari_ssmamba.inference.jpeg_batches import JpegBatchReader
    from napari_ssmamba.inference.tiling import tile_geometry
    from napari_ssmamba.slide import open_slide

    rng = np.random.default_rng(seed)
    out = {}
    for path in slide_paths:
        with open_slide(path) as slide:
            geometry = tile_geometry(slide.mpp, slide.level_downsamples, 224, 0.5)
            jpeg = slide.jpeg_tiles(geometry.level)
            if jpeg is None:
                continue
            rows, cols = np.nonzero(jpeg.stored)
            pick = rng.choice(len(rows), min(tiles, len(rows)), replace=False)
            entry = {"level": geometry.level, "colorspace": jpeg.colorspace}
            try:
                reader = JpegBatchReader(slide, geometry, device)
            except ValueError as error:
                entry["nvjpeg"] = str(error)
            else:
                means = [reader.check(int(rows[i]), int(cols[i])) for i in pick]
                entry["nvjpeg"] = {
                    "check_tile": reader.check(),
                    "mean_over_tiles": float(np.mean(means)),
                    "max_tile_mean": float(np.max(means)),
                }
            out[Path(path).name] = entry
    return out


class _OpenSlideTiles:
    """A map-style dataset: openslide read_region at the pipeline's level, PIL resize, CPU normalise."""

    def __init__(self, path, boxes, geometry, mean, std):
        self.path, self.boxes, self.g = str(path), boxes, geometry
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self._slide = None

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, index):
        import openslide
        from PIL import Image

        if self._slide is None:
            self._slide = openslide.OpenSlide(self.path)
        x, y, w, _ = (int(v) for v in self.boxes[index])
        size = max(round(w / self.g.level_downsample), 1)
        image = self._slide.read_region((x, y), self.g.level, (size, size)).convert("RGB")
        image = image.resize((self.g.tile_size, self.g.tile_size), Image.Resampling.BILINEAR)
        array = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0
        return (array - self.mean) / self.std


def time_baseline(slide_path, model, card, result, device, batch_size, num_workers):
    import torch

    dataset = _OpenSlideTiles(
        slide_path, result.tile_boxes_l0, result.geometry, card.mean, card.std
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    model = model.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for batch in loader:
            model(torch.as_tensor(batch).to(device, non_blocking=True)).float().softmax(1).cpu()
    _sync(device)
    return time.perf_counter() - start


def time_click_to_result(
    slide_path, checkpoint, roi, device, loaded_model=None, cache=None
) -> dict:
    """What the Classify widget's worker does after Run, without napari (see ``time_gui``).

    ``loaded_model``: the (model, card) a previous Run loaded, which the widget keeps; ``cache``:
    the widget's ``ClassificationCache`` from a previous Run (tissue mask, unchanged ROIs), or a
    new one.
    """
    from napari_ssmamba.inference import ClassificationCache, classify_slide
    from napari_ssmamba.model import load_checkpoint
    from napari_ssmamba.slide import open_slide

    with open_slide(slide_path) as slide:  # the viewer has the slide open already
        _sync(device)
        start = time.perf_counter()
        model, card = loaded_model or load_checkpoint(checkpoint, device="cpu")
        loaded = time.perf_counter()
        cache = cache if cache is not None else ClassificationCache()
        result = classify_slide(slide, model, card, rois=[roi], device=str(device), cache=cache)
        _sync(device)
        end = time.perf_counter()
    return {
        "click_to_result_s": end - start,
        "load_checkpoint_s": loaded - start,
        "classify_s": end - loaded,
        "tiles": result.n_tiles,
        "tile_decoder": result.parameters["tile_decoder"],
        "cuda_graphs": result.parameters["cuda_graphs"],
        "timings_s": result.timings,
        "model": (model, card),
        "cache": cache,
    }


def time_gui(slide_path, model, card, roi, device, after_warm_up: bool = False) -> dict:
    """Seconds from clicking Run in the Classify widget to the class map drawn on the canvas.

    Needs a display (use ``xvfb-run`` on a headless machine). The model is saved as a checkpoint
    first, since the widget loads its model from a file. Run is clicked at once, so that the
    Run waits for the widget's warm-up (loading the model counts, as it does for a user who
    clicks straight away), or with ``after_warm_up`` once the warm-up is done, as for a user who
    draws an ROI first (the warm-up's own seconds are reported beside).
    """
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_ssmamba.gui.classify_widget import ClassifyWidget
    from napari_ssmamba.gui.slide_reader import slide_layer_data
    from napari_ssmamba.model import save_checkpoint
    from napari_ssmamba.slide import open_slide

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model, card, Path(tmp) / "model.safetensors")
        viewer = napari.Viewer(show=True)
        data, kwargs, _ = slide_layer_data(open_slide(slide_path))[0]
        slide_layer = viewer.add_image(data, **kwargs)
        x0, y0, x1, y1 = roi.bounds
        viewer.add_shapes(
            [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])],
            shape_type="rectangle",
            name="ROIs",
            scale=slide_layer.scale[-2:],
        )
        created = time.perf_counter()
        widget = ClassifyWidget(viewer)
        widget.roi_combo.setCurrentText("ROIs")
        widget.model_path.setText(str(checkpoint))
        widget.model_combo.setCurrentText("Checkpoint file")
        widget.device_combo.setCurrentText("cuda" if device.type == "cuda" else "cpu")
        app = QApplication.instance()
        warm_up_s = None
        if after_warm_up:  # the widget prepares each choice in turn; None once all are done
            while widget._warming is not None:
                app.processEvents()
                time.sleep(0.005)
            warm_up_s = time.perf_counter() - created
        shown = {}
        show_result = widget._show_result

        def timed_show_result(result):
            shown["returned"] = time.perf_counter()
            show_result(result)

        widget._show_result = timed_show_result
        app.processEvents()
        start = time.perf_counter()
        widget.run_button.click()
        while widget._worker is not None:
            app.processEvents()
            time.sleep(0.005)
        viewer.screenshot(canvas_only=True, flash=False)  # forces the canvas to draw the layers
        end = time.perf_counter()
        tiles = widget.result.n_tiles
        viewer.close()
    return {
        "click_to_heatmap_s": end - start,
        "worker_s": shown["returned"] - start,
        "layers_and_draw_s": end - shown["returned"],
        "tiles": tiles,
        "clicked": "after the warm-up" if after_warm_up else "at once",
        "warm_up_s": warm_up_s,
    }


def run_case(
    name, slide, slide_path, model, card, rois, device, batch_size, attention, workers, repeats
):
    """Time each way ``repeats`` times, interleaved, and keep each one's best time."""
    ways = ["pipeline", "model_only", "baseline"]
    if device.type == "cuda":
        ways[1:1] = [
            "pipeline_eager",
            "pipeline_cpu_decode",
            "pipeline_libjpeg",
            "model_only_eager",
            "model_only_on_device",
            "nvjpeg_reader_only",
        ]
    best = {way: np.inf for way in ways}
    best_total = {way: np.inf for way in ways if way.startswith("pipeline")}
    decoders, timings = {}, {}
    for repeat in range(repeats):
        for way in ways:
            print(f"[{name}] round {repeat + 1}/{repeats}: {way} ...", file=sys.stderr, flush=True)
            if way.startswith("pipeline"):
                result, total = time_pipeline(
                    slide,
                    model,
                    card,
                    rois,
                    device,
                    batch_size,
                    attention,
                    decoder={"pipeline_cpu_decode": "cpu", "pipeline_libjpeg": "libjpeg"}.get(
                        way, "auto"
                    ),
                    cuda_graphs=way != "pipeline_eager",
                )
                best[way] = min(best[way], result.timings["predict_s"])
                best_total[way] = min(best_total[way], total)
                decoders[way] = result.parameters["tile_decoder"]
                if way == "pipeline":
                    timings = result.timings
            elif way == "nvjpeg_reader_only":
                seconds = time_reader_only(slide, result, device, batch_size, "nvjpeg")
                best[way] = min(best[way], seconds)
            elif way.startswith("model_only"):
                seconds = time_model_only(
                    slide,
                    model,
                    card,
                    result,
                    device,
                    batch_size,
                    attention,
                    on_device=way == "model_only_on_device",
                    cuda_graphs=way != "model_only_eager",
                )
                best[way] = min(best[way], seconds)
            else:
                seconds = time_baseline(
                    slide_path, model, card, result, device, batch_size, workers
                )
                best[way] = min(best[way], seconds)
    n = result.n_tiles
    case = {
        "tiles": n,
        "background_tiles": result.n_background_tiles,
        "tile_decoder": decoders,
        "pipeline_tiles_per_s": n / best["pipeline"],
        "pipeline_end_to_end_tiles_per_s": n / best_total["pipeline"],
        "model_only_tiles_per_s": n / best["model_only"],
        "baseline_tiles_per_s": n / best["baseline"],
        "pipeline_vs_model_only": best["model_only"] / best["pipeline"],
        "pipeline_vs_baseline": best["baseline"] / best["pipeline"],
    }
    if device.type == "cuda":
        case.update(
            {
                "pipeline_cpu_decode_tiles_per_s": n / best["pipeline_cpu_decode"],
                "model_only_on_device_tiles_per_s": n / best["model_only_on_device"],
                "pipeline_vs_model_only_on_device": best["model_only_on_device"] / best["pipeline"],
                "pipeline_cpu_decode_vs_model_only": best["model_only"]
                / best["pipeline_cpu_decode"],
                "nvjpeg_vs_cpu_decode": best["pipeline_cpu_decode"] / best["pipeline"],
                "nvjpeg_reader_only_tiles_per_s": n / best["nvjpeg_reader_only"],
                "cuda_graphs": result.parameters["cuda_graphs"],
                "pipeline_libjpeg_tiles_per_s": n / best["pipeline_libjpeg"],
                "pipeline_libjpeg_vs_model_only": best["model_only"] / best["pipeline_libjpeg"],
                "libjpeg_vs_cpu_decode": best["pipeline_cpu_decode"] / best["pipeline_libjpeg"],
                "pipeline_eager_vs_model_only_eager": best["model_only_eager"]
                / best["pipeline_eager"],
                "graphs_vs_eager_model_only": best["model_only_eager"] / best["model_only"],
                "graphs_vs_eager_pipeline": best["pipeline_eager"] / best["pipeline"],
            }
        )
    case.update(
        {
            "timings_s": {
                **timings,
                **{f"best_{way}": seconds for way, seconds in best.items()},
                **{f"best_{way}_end_to_end": seconds for way, seconds in best_total.items()},
            },
            "repeats": repeats,
            "batch_size": result.parameters["batch_size"],
            "level": result.geometry.level,
        }
    )
    print(
        f"[{name}] {json.dumps({k: v for k, v in case.items() if k != 'timings_s'})}",
        file=sys.stderr,
        flush=True,
    )
    return case


def environment(device) -> dict:
    import torch

    import napari_ssmamba

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "napari_ssmamba": napari_ssmamba.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cuda_device_max_connections": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slide", type=Path, help="slide to read (openslide format)")
    parser.add_argument("--out", type=Path, help="results JSON to write")
    parser.add_argument(
        "--cpu", action="store_true", help="CPU mode: ssmamba_tiny, 1 mm² ROI, no whole slide"
    )
    parser.add_argument(
        "--arch", default=None, help="architecture (default ssmamba_base; ssmamba_tiny with --cpu)"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="checkpoint instead of random weights"
    )
    parser.add_argument(
        "--device", default=None, help="default: cuda when present (cpu with --cpu)"
    )
    parser.add_argument(
        "--roi-mm", type=float, default=None, help="ROI side in mm (default 2; 1 with --cpu)"
    )
    parser.add_argument(
        "--whole-slide",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the whole slide (default: on, off with --cpu)",
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--attention", action="store_true", help="also compute LPR maps (GUI setting)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader workers of the baseline",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds of the three timings, best kept (default 1; 3 with --cpu)",
    )
    parser.add_argument(
        "--gui", action="store_true", help="also time Run-to-heatmap in napari (needs a display)"
    )
    parser.add_argument(
        "--render", nargs="+", type=Path, help="print a Markdown table of results JSONs"
    )
    args = parser.parse_args(argv)
    if args.render:
        print(render_markdown([json.loads(p.read_text()) for p in args.render]))
        return 0
    if args.slide is None or args.out is None:
        parser.error("--slide and --out are required")

    from napari_ssmamba.inference.predict import resolve_device
    from napari_ssmamba.model import load_checkpoint
    from napari_ssmamba.slide import open_slide

    device = resolve_device(args.device or ("cpu" if args.cpu else "auto"))
    roi_mm = args.roi_mm or (1.0 if args.cpu else 2.0)
    whole = (not args.cpu) if args.whole_slide is None else args.whole_slide
    if args.model:
        model, card = load_checkpoint(args.model, device="cpu")
    else:
        model, card = random_model(args.arch or ("ssmamba_tiny" if args.cpu else "ssmamba_base"))
    batch_size = args.batch_size or (8 if device.type == "cpu" else 256)
    repeats = args.repeats or (3 if args.cpu else 1)

    results = {
        "benchmark": "pipeline",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "slide": str(args.slide),
        "arch": card.arch,
        "tile_size": card.tile_size,
        "model_mpp": card.mpp,
        "attention": args.attention,
        "repeats": repeats,
        "environment": environment(device),
        "cases": {},
    }
    if device.type == "cuda":
        sample = Path(__file__).parents[1] / "src/napari_ssmamba/data/CMU-1-Small-Region.svs"
        results["decoder_differences"] = decoder_differences([args.slide, sample], device)
        print(json.dumps(results["decoder_differences"]), file=sys.stderr, flush=True)
    with open_slide(args.slide) as slide:
        results["slide_dimensions_wh"] = list(slide.dimensions)
        results["slide_mpp_yx"] = list(slide.mpp)
        roi = roi_around_tissue(slide, roi_mm)
        # warm up: CUDA context, kernels, first reads
        time_pipeline(
            slide, model, card, [roi.centroid.buffer(10)], device, batch_size, args.attention
        )
        label = f"roi_{roi_mm:g}mm"
        results["cases"][label] = run_case(
            label,
            slide,
            args.slide,
            model,
            card,
            [roi],
            device,
            batch_size,
            args.attention,
            args.workers,
            repeats,
        )
        results["cases"][label]["roi_area_mm2"] = roi.area * slide.mpp[0] * slide.mpp[1] / 1e6
        if args.gui:
            print(f"[{label}] napari Run to heatmap ...", file=sys.stderr, flush=True)
            # the warmed-up click first: the second Run in the process has the advantage
            results["cases"][label]["gui_after_warm_up"] = time_gui(
                args.slide, model, card, roi, device, after_warm_up=True
            )
            results["cases"][label]["gui"] = time_gui(args.slide, model, card, roi, device)
        if device.type == "cuda":
            import tempfile

            import shapely.affinity

            from napari_ssmamba.model import save_checkpoint

            print(f"[{label}] click to result ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = save_checkpoint(model, card, Path(tmp) / "model.safetensors")
                first = time_click_to_result(args.slide, checkpoint, roi, device)
                again = time_click_to_result(args.slide, checkpoint, roi, device, first["model"])
                # the user moves the ROI by half its width and runs again: the widget keeps its
                # model and cache, so the tissue mask is not computed again
                x0, _, x1, _ = roi.bounds
                moved = time_click_to_result(
                    args.slide,
                    checkpoint,
                    shapely.affinity.translate(roi, xoff=(x1 - x0) / 2),
                    device,
                    first["model"],
                    first["cache"],
                )
                results["cases"][label]["click_to_result"] = [
                    {k: v for k, v in click.items() if k not in ("model", "cache")}
                    for click in (first, again)
                ]
                results["cases"][label]["click_to_result_moved_roi"] = {
                    k: v for k, v in moved.items() if k not in ("model", "cache")
                }
        if whole:
            results["cases"]["whole_slide"] = run_case(
                "whole_slide",
                slide,
                args.slide,
                model,
                card,
                None,
                device,
                batch_size,
                args.attention,
                args.workers,
                repeats,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _gui_seconds(case: dict) -> str:
    gui = case.get("gui")
    if gui:
        return f"{gui['click_to_heatmap_s']:.1f}"
    clicks = case.get("click_to_result")
    return f"{clicks[-1]['click_to_result_s']:.2f} (worker)" if clicks else "-"


def render_markdown(runs: list[dict]) -> str:
    lines = [
        (
            "| device | model | case | tiles | decoder | pipeline tiles/s | model-only tiles/s "
            "(host / on GPU) | pipeline / model-only (host / on GPU) | CPU-decode pipeline "
            "tiles/s | baseline tiles/s | pipeline / baseline | Run to heatmap (s) |"
        ),
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        env = run["environment"]
        device = env.get("gpu") or f"CPU ({env['torch_threads']} threads)"
        for name, case in run["cases"].items():
            decoder = case.get("tile_decoder", {}).get("pipeline", "cpu")
            on_device = case.get("model_only_on_device_tiles_per_s")
            model_only = f"{case['model_only_tiles_per_s']:.4g}"
            ratio = f"{case['pipeline_vs_model_only']:.0%}"
            if on_device:
                model_only += f" / {on_device:.4g}"
                ratio += f" / {case['pipeline_vs_model_only_on_device']:.0%}"
            cpu_decode = case.get("pipeline_cpu_decode_tiles_per_s")
            lines.append(
                f"| {device} | {run['arch']} | {name} | {case['tiles']} | {decoder} "
                f"| {case['pipeline_tiles_per_s']:.4g} | {model_only} | {ratio} "
                f"| {f'{cpu_decode:.4g}' if cpu_decode else '-'} "
                f"| {case['baseline_tiles_per_s']:.4g} "
                f"| {case['pipeline_vs_baseline']:.2f}x | {_gui_seconds(case)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
