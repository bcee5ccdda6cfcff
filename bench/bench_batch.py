"""Tiles per second through ``ssmamba predict`` against the model alone and a plain baseline.

On the same slides and the same tiles, in one run:

- ``batch_runner``: ``predict_slides`` on a local dask cluster with one worker (cold: the worker
  loads the model; warm: a second pass with the model cached), end to end (read, tissue, tiles,
  model, every export).
- ``pipeline_in_process``: ``run_slide`` in this process, no dask, same outputs.
- ``model_alone``: ``TileClassifier`` (the pipeline's device half: uint8 -> normalise -> model +
  LPR maps) on tiles already read and already on the device.
- ``plain_baseline``: OpenSlide ``read_region`` + PIL resize in a torch ``DataLoader`` + the same
  ``TileClassifier``, the way most pipelines read.
- ``nvjpeg`` (with torchvision and CUDA): the slide's own JPEG tiles at the model's level, decoded
  on the GPU (``torchvision.io.decode_jpeg(device="cuda")``) against imagecodecs on the CPU threads,
  and the model fed from each.
- ``scaling`` (with two or more GPUs): the batch runner with one and with two workers on the same
  slides (a single slide is linked four times), and the ratio.

usage: python bench/bench_batch.py --slides DIR --out results.json [--model CKPT]
When DIR holds no slide, a generated one is written there first (bench/make_big_slide.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ensure_slides(slides_dir: Path, size_wh: tuple[int, int]) -> list[Path]:
    from napari_ssmamba.inference.batch import find_slides

    slides = find_slides([slides_dir]) if slides_dir.is_dir() else []
    if not slides:
        out = slides_dir / "big.tif"
        print(f"no slide in {slides_dir}: writing {out} ({size_wh[0]} x {size_wh[1]} px)",
              flush=True)
        slides_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "make_big_slide.py"), str(out), "--width",
                        str(size_wh[0]), "--height", str(size_wh[1])], check=True)
        slides = [out]
    return slides


def ensure_checkpoint(model_arg: str | None, arch: str, work: Path) -> Path:
    """The checkpoint to bench: --model, else the bundled default, else an untrained ``arch``."""
    from napari_ssmamba.errors import CheckpointError
    from napari_ssmamba.model import ModelCard, create_model, default_checkpoint, save_checkpoint

    if model_arg:
        return Path(model_arg)
    try:
        return Path(default_checkpoint())
    except CheckpointError:
        pass
    model = create_model(arch, num_classes=3)
    cfg = model.pretrained_cfg
    card = ModelCard(arch=arch, class_names=["tumor", "stroma", "other"],
                     class_colors=[(200, 0, 0), (0, 150, 0), (0, 0, 200)],
                     tile_size=cfg["tile_size"], mpp=cfg["mpp"], mean=cfg["mean"], std=cfg["std"],
                     untrained=True)
    path = work / "model" / "model.safetensors"
    save_checkpoint(model, card, path)
    return path


def read_boxes(tiles_csv: Path) -> np.ndarray:
    with open(tiles_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[int(float(r[k])) for k in ("minx", "miny", "width", "height")] for r in rows],
                    dtype=np.int64).reshape(-1, 4)


def best_of(runs: list[dict]) -> dict:
    """The fastest of repeated measurements (the others were slowed by something else), with the
    rates of all of them."""
    best = dict(max(runs, key=lambda r: r["tiles_per_s"]))
    best["all_tiles_per_s"] = [r["tiles_per_s"] for r in runs]
    return best


def stage_seconds(out_dir: Path, outcomes) -> dict:
    """Seconds per pipeline stage summed over the slides, from their run records; ``other`` is
    the rest of each task (opening the slide, writing the exports, loading the model)."""
    from napari_ssmamba.export import output_paths

    stages: dict[str, float] = {}
    for outcome in outcomes:
        record = json.loads(output_paths(out_dir, outcome.stem)["run"].read_text())
        timings = record.get("timings_s", {})
        for key, value in timings.items():
            if key != "total_s":
                stages[key] = stages.get(key, 0.0) + value
        stages["other_s"] = stages.get("other_s", 0.0) + outcome.seconds - timings.get("total_s", 0)
    return {k: round(v, 3) for k, v in stages.items()}


def bench_batch_runner(slides, checkpoint, out_dir, n_workers, device, batch_size, repeats):
    """The first pass (the worker loads the model) apart, then the best of ``repeats`` passes."""
    from napari_ssmamba.inference import batch

    tasks = batch.plan_tasks(slides)
    sha = batch.model_card_sha256(checkpoint)
    result = {"workers": n_workers, "slides": len(slides)}
    t0 = time.perf_counter()
    with batch.dask_client(n_workers=n_workers, device=device, dashboard_address=None) as (
        client, info
    ):
        result["cluster_start_s"] = round(time.perf_counter() - t0, 2)
        result["cluster"] = info.kind
        passes = []
        for i in range(1 + repeats):
            settings = batch.PredictSettings(
                checkpoint=Path(checkpoint).resolve(), model_card_sha256=sha,
                out_dir=out_dir / f"pass{i}", device=device, batch_size=batch_size,
                torch_threads=info.torch_threads)
            t0 = time.perf_counter()
            outcomes = batch.predict_slides(tasks, settings, client)
            seconds = time.perf_counter() - t0
            failed = [o for o in outcomes if o.status != "ok"]
            if failed:
                raise RuntimeError(f"batch runner failed: {failed}")
            tiles = sum(o.tiles for o in outcomes)
            passes.append({
                "tiles": tiles, "seconds": round(seconds, 3),
                "tiles_per_s": round(tiles / seconds, 1),
                "slide_seconds": [round(o.seconds, 3) for o in outcomes],
                "stages_s": stage_seconds(settings.out_dir, outcomes),
            })
    result["cold"] = passes[0]
    result["warm"] = best_of(passes[1:])
    return result


def bench_in_process(slide, model, card, out_dir, device, batch_size, repeats):
    from napari_ssmamba.export import output_paths, slide_stem
    from napari_ssmamba.inference import run_slide

    run_slide(slide, model, card, out_dir / "warmup", device=device, batch_size=batch_size)
    runs = []
    for i in range(repeats):
        t0 = time.perf_counter()
        run_slide(slide, model, card, out_dir / f"run{i}", device=device, batch_size=batch_size)
        seconds = time.perf_counter() - t0
        tiles = len(read_boxes(output_paths(out_dir / f"run{i}", slide_stem(slide))["tiles"]))
        runs.append({"tiles": tiles, "seconds": round(seconds, 3),
                     "tiles_per_s": round(tiles / seconds, 1)})
    return best_of(runs)


def tile_geometry_for(slide_path, card):
    from napari_ssmamba.inference.tiling import tile_geometry
    from napari_ssmamba.slide import open_slide

    with open_slide(slide_path) as slide:
        return tile_geometry(slide.mpp, slide.level_downsamples, card.tile_size, card.mpp)


def bench_model_alone(slide_path, boxes, model, card, device, batch_size, max_tiles, repeats):
    import torch

    from napari_ssmamba.inference.predict import SlideTileReader, TileClassifier
    from napari_ssmamba.slide import open_slide

    boxes = boxes[:max_tiles]
    with open_slide(slide_path) as slide:
        reader = SlideTileReader(slide, tile_geometry_for(slide_path, card))
        tiles = torch.from_numpy(np.stack([reader(b) for b in boxes])).to(device)
    classify = TileClassifier(model, card, device)
    classify(tiles[:batch_size])  # warm-up
    runs = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for start in range(0, len(tiles), batch_size):
            classify(tiles[start:start + batch_size])
        synchronize(device)
        seconds = time.perf_counter() - t0
        runs.append({"tiles": len(tiles), "seconds": round(seconds, 3),
                     "tiles_per_s": round(len(tiles) / seconds, 1)})
    return best_of(runs)


class OpenSlideTiles:
    """A torch Dataset of boxes read with ``openslide.OpenSlide.read_region`` and PIL-resized."""

    def __init__(self, slide_path, boxes, level, downsample, tile_size):
        self.slide_path, self.boxes = str(slide_path), boxes
        self.level, self.downsample, self.tile_size = level, downsample, tile_size
        self.slide = None

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, i):
        import openslide
        from PIL import Image

        if self.slide is None:  # one handle per DataLoader worker
            self.slide = openslide.OpenSlide(self.slide_path)
        x, y, w, h = (int(v) for v in self.boxes[i])
        size = (max(round(w / self.downsample), 1), max(round(h / self.downsample), 1))
        image = self.slide.read_region((x, y), self.level, size).convert("RGB")
        if image.size != (self.tile_size, self.tile_size):
            image = image.resize((self.tile_size, self.tile_size), Image.Resampling.BILINEAR)
        return np.asarray(image)


def bench_plain_baseline(slide_path, boxes, model, card, device, batch_size, loader_workers,
                         repeats):
    import torch

    from napari_ssmamba.inference.predict import TileClassifier

    g = tile_geometry_for(slide_path, card)
    dataset = OpenSlideTiles(slide_path, boxes, g.level, g.level_downsample, card.tile_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=loader_workers,
        pin_memory=device.type == "cuda", collate_fn=lambda b: torch.from_numpy(np.stack(b)))
    classify = TileClassifier(model, card, device)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for tiles in loader:
            classify(tiles)
            n += len(tiles)
        synchronize(device)
        seconds = time.perf_counter() - t0
        runs.append({"tiles": n, "seconds": round(seconds, 3), "tiles_per_s": round(n / seconds, 1),
                     "loader_workers": loader_workers})
    return best_of(runs)


def jpeg_tiles_of_level(slide_path, level, max_tiles):
    """Complete JPEG streams (tables merged in) of up to ``max_tiles`` tiles of a pyramid level,
    taken from the middle rows of the level, where the tissue is."""
    import tifffile

    with tifffile.TiffFile(slide_path) as tif:
        page = tif.series[0].levels[level].pages[0]
        if page.compression != 7 or not page.is_tiled:
            raise ValueError(f"level {level} of {slide_path} is not JPEG-tiled")
        tables = page.jpegtables or b""
        offsets, counts = page.dataoffsets, page.databytecounts
        start = max(0, len(offsets) // 2 - max_tiles // 2)
        streams = []
        fh = tif.filehandle
        for offset, count in zip(offsets[start:start + max_tiles], counts[start:start + max_tiles]):
            fh.seek(offset)
            data = fh.read(count)
            streams.append(tables[:-2] + data[2:] if tables else data)
        return streams, (page.tilelength, page.tilewidth)


def bench_nvjpeg(slide_path, model, card, device, batch_size, max_tiles, cpu_threads):
    """Decode the slide's JPEG tiles on the CPU (imagecodecs) and on the GPU (nvJPEG), then feed
    the model ``tile_size`` crops of them either way."""
    import imagecodecs
    import torch
    import torchvision
    from torchvision.io import decode_jpeg

    from napari_ssmamba.inference.predict import TileClassifier

    g = tile_geometry_for(slide_path, card)
    streams, (tile_h, tile_w) = jpeg_tiles_of_level(slide_path, g.level, max_tiles)
    per_side_y, per_side_x = tile_h // card.tile_size, tile_w // card.tile_size
    crop = card.tile_size

    def to_model_tiles(batch_hwc):  # (b, H, W, 3) -> (b * k, crop, crop, 3) without resampling
        if g.read_size != crop:  # level does not match the model's MPP: resample whole tiles
            x = batch_hwc.permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, scale_factor=crop / g.read_size, mode="bilinear")
            batch_hwc = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1)
        b, h, w, _ = batch_hwc.shape
        ny, nx = max(h // crop, 1), max(w // crop, 1)
        t = batch_hwc[:, : ny * crop, : nx * crop]
        t = t.reshape(b, ny, crop, nx, crop, 3).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(b * ny * nx, crop, crop, 3)

    classify = TileClassifier(model, card, device)
    jpeg_batch = max(batch_size // max(per_side_y * per_side_x, 1), 1)
    byte_tensors = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
    result = {"torchvision": torchvision.__version__, "jpeg_tiles": len(streams),
              "jpeg_tile_hw": [tile_h, tile_w], "level": g.level}

    def run(decode_batch):
        """Model tiles per second when ``decode_batch(start, stop)`` feeds the model."""
        n = 0
        synchronize(device)
        t0 = time.perf_counter()
        for start in range(0, len(streams), jpeg_batch):
            tiles = to_model_tiles(decode_batch(start, start + jpeg_batch))
            classify(tiles)
            n += len(tiles)
        synchronize(device)
        seconds = time.perf_counter() - t0
        return {"tiles": n, "seconds": round(seconds, 3), "tiles_per_s": round(n / seconds, 1)}

    def gpu_batch(start, stop):
        images = decode_jpeg(byte_tensors[start:stop], device=device)  # list of (3, H, W)
        return torch.stack(images).permute(0, 2, 3, 1)

    with ThreadPoolExecutor(cpu_threads) as pool:
        def cpu_batch(start, stop):
            tiles = torch.from_numpy(np.stack(list(pool.map(imagecodecs.jpeg_decode,
                                                            streams[start:stop]))))
            if device.type == "cuda":
                tiles = tiles.pin_memory()
            return tiles.to(device, non_blocking=True)

        t0 = time.perf_counter()
        list(pool.map(imagecodecs.jpeg_decode, streams))
        result["cpu_decode_tiles_per_s"] = round(len(streams) / (time.perf_counter() - t0), 1)
        result["cpu_decode_pipeline"] = run(cpu_batch)

    decode_jpeg(byte_tensors[:jpeg_batch], device=device)  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, len(byte_tensors), jpeg_batch):
        decode_jpeg(byte_tensors[start:start + jpeg_batch], device=device)
    synchronize(device)
    result["gpu_decode_tiles_per_s"] = round(len(streams) / (time.perf_counter() - t0), 1)
    result["gpu_decode_pipeline"] = run(gpu_batch)
    result["gain"] = round(result["gpu_decode_pipeline"]["tiles_per_s"]
                           / result["cpu_decode_pipeline"]["tiles_per_s"], 2)
    return result


def linked_copies(slides, work: Path, count: int) -> list[Path]:
    """``count`` slide files for the scaling run: the slides themselves, or links to them."""
    if len(slides) >= count:
        return list(slides)
    folder = work / "scaling-slides"
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for i in range(count):
        source = slides[i % len(slides)]
        link = folder / f"{source.stem}-copy{i}{source.suffix}"
        if not link.exists():
            link.symlink_to(source.resolve())
        copies.append(link)
    return copies


def bench_scaling(slides, checkpoint, work, device, batch_size, repeats):
    """The batch runner with one and with two workers (one GPU each) on the same slides."""
    scaling = {f"{n}_workers": bench_batch_runner(slides, checkpoint, work / f"scaling{n}", n,
                                                  device, batch_size, repeats)
               for n in (1, 2)}
    scaling["ratio"] = round(scaling["2_workers"]["warm"]["tiles_per_s"]
                             / scaling["1_workers"]["warm"]["tiles_per_s"], 2)
    return scaling


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("napari-ssmamba", "torch", "torchvision", "dask", "distributed",
                 "openslide-python", "openslide-bin", "tifffile", "imagecodecs"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=Path, required=True, help="folder of slides (or empty)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--model", default=None, help="checkpoint; default: the bundled model")
    parser.add_argument("--arch", default="ssmamba_tiny", help="untrained model when none exists")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--loader-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repetitions of each measurement; the best one is reported")
    parser.add_argument("--max-tiles", type=int, default=4096,
                        help="tiles for the model-alone and nvJPEG measurements")
    parser.add_argument("--make-size", default=None, metavar="WxH",
                        help="size of the generated slide (default 6000x5000 on CPU, 40000x32000 "
                        "on CUDA)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (in --out's folder)")
    args = parser.parse_args()

    import torch

    from napari_ssmamba.export import output_paths, slide_stem
    from napari_ssmamba.inference.predict import default_batch_size, resolve_device
    from napari_ssmamba.model import load_checkpoint

    device = resolve_device(args.device)
    size = args.make_size or ("40000x32000" if device.type == "cuda" else "6000x5000")
    slides = ensure_slides(args.slides, tuple(int(v) for v in size.lower().split("x")))
    work = Path(tempfile.mkdtemp(prefix="bench-batch-", dir=args.out.resolve().parent))
    checkpoint = ensure_checkpoint(args.model, args.arch, work)
    model, card = load_checkpoint(checkpoint, device=str(device))
    batch_size = args.batch_size or default_batch_size(device)
    results = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or "cpu"),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "versions": versions(), "checkpoint": str(checkpoint), "arch": card.arch,
        "tile_size": card.tile_size, "model_mpp": card.mpp, "batch_size": batch_size,
        "slides": [str(s) for s in slides],
    }

    def step(name, fn, *a):
        print(f"{name} ...", flush=True)
        try:
            results[name] = fn(*a)
        except Exception as exc:  # a failed measurement is reported, the others still run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    try:
        step("batch_runner", bench_batch_runner, slides, checkpoint, work / "batch", 1,
             args.device, batch_size, args.repeats)
        first = slides[0]
        boxes = read_boxes(output_paths(work / "batch" / "pass0", slide_stem(first))["tiles"])
        step("pipeline_in_process", bench_in_process, first, model, card, work / "inproc", device,
             batch_size, args.repeats)
        step("model_alone", bench_model_alone, first, boxes, model, card, device, batch_size,
             args.max_tiles, args.repeats)
        step("plain_baseline", bench_plain_baseline, first, boxes, model, card, device,
             batch_size, args.loader_workers, args.repeats)
        try:
            import torchvision  # noqa: F401
        except ImportError:
            results["nvjpeg"] = {"skipped": "torchvision is not installed"}
        else:
            if device.type == "cuda":
                step("nvjpeg", bench_nvjpeg, first, model, card, device, batch_size,
                     args.max_tiles, args.loader_workers)
            else:
                results["nvjpeg"] = {"skipped": "needs CUDA"}
        if device.type == "cuda" and torch.cuda.device_count() >= 2:
            step("scaling", bench_scaling, linked_copies(slides, work, 4), checkpoint, work,
                 args.device, batch_size, args.repeats)
        else:
            results["scaling"] = {"skipped": "needs two CUDA GPUs"}
    finally:
        args.out.write_text(json.dumps(results, indent=2))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")
    for name in ("batch_runner", "pipeline_in_process", "model_alone", "plain_baseline"):
        r = results.get(name, {})
        r = r.get("warm", r)
        print(f"{name:>20}: {r.get('tiles_per_s', r.get('error', '-'))} tiles/s")
    for name, key in (("nvjpeg", "gain"), ("scaling", "ratio")):
        r = results.get(name, {})
        print(f"{name:>20}: {key} {r.get(key, r.get('skipped', r.get('error')))}")


if __name__ == "__main__":
    main()
