"""Throughput of the classification pipeline against the model alone and a plain baseline.

For an ROI (default 2 mm x 2 mm, centred on the tissue) and, optionally, the whole slide:

- pipeline:   ``classify_slide`` end to end (reader threads, pinned memory, device normalisation);
              tiles/s over its prediction phase, and over the whole call (tissue mask, tiling, maps);
- model only: the same model on the same tiles, read into memory beforehand (the ceiling);
- baseline:   ``openslide.read_region`` + PIL resize in a ``torch.utils.data.DataLoader``, CPU
              normalisation, then the same model;
- with --gui: seconds from clicking Run in the Classify widget to the class map on the canvas
              (the widget also computes the LPR attention map).

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


def time_pipeline(slide, model, card, rois, device, batch_size, attention):
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
    )
    _sync(device)
    total = time.perf_counter() - start
    return result, total


def time_model_only(slide, model, card, result, device, batch_size, attention):
    """The model on the result's tiles, read into (pinned) memory first."""
    import torch

    from napari_ssmamba.inference.predict import SlideTileReader, TileClassifier

    reader = SlideTileReader(slide, result.geometry)
    tiles = torch.from_numpy(np.stack([reader(box) for box in result.tile_boxes_l0]))
    if device.type == "cuda":
        tiles = tiles.pin_memory()
    classify = TileClassifier(model, card, device, attention=attention)
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(tiles), batch_size):
        classify(tiles[i : i + batch_size])
    _sync(device)
    return time.perf_counter() - start


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


def time_gui(slide_path, model, card, roi, device) -> dict:
    """Seconds from clicking Run in the Classify widget to the class map drawn on the canvas.

    Needs a display (use ``xvfb-run`` on a headless machine). The model is saved as a checkpoint
    first, since the widget loads its model from a file; loading it counts, as it does for a user.
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
        widget = ClassifyWidget(viewer)
        widget.roi_combo.setCurrentText("ROIs")
        widget.model_combo.setCurrentText("Checkpoint file")
        widget.model_path.setText(str(checkpoint))
        widget.device_combo.setCurrentText("cuda" if device.type == "cuda" else "cpu")
        app = QApplication.instance()
        app.processEvents()
        start = time.perf_counter()
        widget.run_button.click()
        while widget._worker is not None:
            app.processEvents()
            time.sleep(0.005)
        viewer.screenshot(canvas_only=True, flash=False)  # forces the canvas to draw the layers
        seconds = time.perf_counter() - start
        tiles = widget.result.n_tiles
        viewer.close()
    return {"click_to_heatmap_s": seconds, "tiles": tiles}


def run_case(
    name, slide, slide_path, model, card, rois, device, batch_size, attention, workers, repeats
):
    """Time the three ways ``repeats`` times, interleaved, and keep each one's best time."""
    best = {"predict": np.inf, "end_to_end": np.inf, "model_only": np.inf, "baseline": np.inf}
    for repeat in range(repeats):
        print(f"[{name}] round {repeat + 1}/{repeats}: pipeline ...", file=sys.stderr, flush=True)
        result, total = time_pipeline(slide, model, card, rois, device, batch_size, attention)
        best["predict"] = min(best["predict"], result.timings["predict_s"])
        best["end_to_end"] = min(best["end_to_end"], total)
        print(f"[{name}] {result.n_tiles} tiles; model only ...", file=sys.stderr, flush=True)
        model_s = time_model_only(slide, model, card, result, device, batch_size, attention)
        best["model_only"] = min(best["model_only"], model_s)
        print(f"[{name}] baseline ...", file=sys.stderr, flush=True)
        baseline_s = time_baseline(slide_path, model, card, result, device, batch_size, workers)
        best["baseline"] = min(best["baseline"], baseline_s)
    n = result.n_tiles
    predict_s, total, model_s, baseline_s = (
        best["predict"],
        best["end_to_end"],
        best["model_only"],
        best["baseline"],
    )
    case = {
        "tiles": n,
        "background_tiles": result.n_background_tiles,
        "pipeline_tiles_per_s": n / predict_s,
        "pipeline_end_to_end_tiles_per_s": n / total,
        "model_only_tiles_per_s": n / model_s,
        "baseline_tiles_per_s": n / baseline_s,
        "pipeline_vs_model_only": model_s / predict_s,
        "pipeline_vs_baseline": baseline_s / predict_s,
        "timings_s": {
            **result.timings,
            "best_predict": predict_s,
            "end_to_end": total,
            "model_only": model_s,
            "baseline": baseline_s,
        },
        "repeats": repeats,
        "batch_size": result.parameters["batch_size"],
        "level": result.geometry.level,
    }
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

    import torch

    from napari_ssmamba.inference.predict import resolve_device
    from napari_ssmamba.model import ModelCard, create_model, load_checkpoint
    from napari_ssmamba.slide import open_slide

    device = resolve_device(args.device or ("cpu" if args.cpu else "auto"))
    roi_mm = args.roi_mm or (1.0 if args.cpu else 2.0)
    whole = (not args.cpu) if args.whole_slide is None else args.whole_slide
    if args.model:
        model, card = load_checkpoint(args.model, device="cpu")
    else:
        arch = args.arch or ("ssmamba_tiny" if args.cpu else "ssmamba_base")
        torch.manual_seed(0)
        model = create_model(arch, num_classes=3)
        card = ModelCard(
            arch=arch,
            class_names=["a", "b", "c"],
            class_colors=[(255, 0, 0), (0, 255, 0), (0, 0, 255)],
            untrained=True,
        )
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
            results["cases"][label]["gui"] = time_gui(args.slide, model, card, roi, device)
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
    return f"{gui['click_to_heatmap_s']:.1f}" if gui else "-"


def render_markdown(runs: list[dict]) -> str:
    lines = [
        (
            "| device | model | case | tiles | pipeline tiles/s | model-only tiles/s "
            "| pipeline / model-only | baseline tiles/s | pipeline / baseline "
            "| napari Run to heatmap (s) |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        env = run["environment"]
        device = env.get("gpu") or f"CPU ({env['torch_threads']} threads)"
        for name, case in run["cases"].items():
            lines.append(
                f"| {device} | {run['arch']} | {name} | {case['tiles']} "
                f"| {case['pipeline_tiles_per_s']:.3g} | {case['model_only_tiles_per_s']:.3g} "
                f"| {case['pipeline_vs_model_only']:.0%} | {case['baseline_tiles_per_s']:.3g} "
                f"| {case['pipeline_vs_baseline']:.2f}x "
                f"| {_gui_seconds(case)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
