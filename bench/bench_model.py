"""Model throughput: SSMamba sizes beside timm's ViT-S/B/L and ResNet-50, in one run.

GPU (default): params, FLOPs (torch.utils.flop_counter, one image: matmuls, convolutions and
attention; the scans and elementwise work are not counted, as for timm's models), and images/s in
eager bf16 autocast under inference_mode at 224 px (batch 256) and 512 px (batch 64): warm-up, then
the median of CUDA-event timings. Extra SSMamba variants (``--variants``) explore the design; a
profile of ssmamba_small lists where its time goes.

CPU (``--cpu``): ms per 224 px tile for ssmamba_tiny with torch.set_num_threads(2), float32, at
batch 1, 8, 16 and 32 (median of 7 runs, each run and the load average recorded).

    python bench/bench_model.py OUT.json [--variants] [--profile] [--scan-knobs | --scan-knobs-only]
    python bench/bench_model.py OUT.json --cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

from napari_ssmamba.model import create_model

SIZES = {224: 256, 512: 64}  # image size -> batch
SSMAMBA = ["ssmamba_tiny", "ssmamba_small", "ssmamba_base"]
TIMM = ["vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224", "resnet50"]


def design(dims, depths, attention, directions=2, d_state=8):
    """Every architecture argument of a candidate, so that none is inherited from the registry."""
    return dict(dims=dims, depths=depths, num_attention_blocks=attention, num_directions=directions,
                alternate_axes=directions == 2, d_state=d_state)


VARIANTS = {  # label -> (registered name, overrides): candidate designs for small and base
    "small/64-128-256-512/1-2-3-4/attn3/dir4": (
        "ssmamba_small", design((64, 128, 256, 512), (1, 2, 3, 4), 3, directions=4)),
    "small/64-128-320-512/1-2-3-4/attn3/alt2": (
        "ssmamba_small", design((64, 128, 320, 512), (1, 2, 3, 4), 3)),
    "small/64-128-256-512/1-2-2-4/attn3/alt2": (
        "ssmamba_small", design((64, 128, 256, 512), (1, 2, 2, 4), 3)),
    "small/64-128-320-512/1-2-2-4/attn3/alt2/d4": (
        "ssmamba_small", design((64, 128, 320, 512), (1, 2, 2, 4), 3, d_state=4)),
    "small/64-128-256-448/1-1-3-3/attn0-0-1-2/alt2": (
        "ssmamba_small", design((64, 128, 256, 448), (1, 1, 3, 3), (0, 0, 1, 2))),
    "small/v0: 64-128-256-512/2-2-6-2/attn1/dir4": (
        "ssmamba_small", design((64, 128, 256, 512), (2, 2, 6, 2), 1, directions=4)),
    "base/96-192-384-768/2-2-6-4/attn3/dir4": (
        "ssmamba_base", design((96, 192, 384, 768), (2, 2, 6, 4), 3, directions=4)),
    "base/96-192-384-768/2-3-8-3/attn1/alt2": (
        "ssmamba_base", design((96, 192, 384, 768), (2, 3, 8, 3), 1)),
    "base/96-192-448-768/1-2-4-6/attn5/alt2": (
        "ssmamba_base", design((96, 192, 448, 768), (1, 2, 4, 6), 5)),
    "base/v0: 96-192-384-768/2-3-8-3/attn1/dir4": (
        "ssmamba_base", design((96, 192, 384, 768), (2, 3, 8, 3), 1, directions=4)),
}
SCAN_KNOBS = [(128, 4, 8), (64, 2, 8), (32, 1, 8), (64, 2, 4), (128, 4, 16)]  # BLOCK_D, warps, UNROLL


def build(name, size, overrides=None):
    if name.startswith("ssmamba"):
        return create_model(name, num_classes=1000, **(overrides or {}))
    import timm

    kwargs = dict(img_size=size) if name.startswith("vit") and size != 224 else {}
    return timm.create_model(name, pretrained=False, **kwargs)


def count_flops(model, size, device):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size, size, device=device)
    # with gradients enabled SSMamba takes its unfused path: the counter does not see the GEMMs
    # behind torch._addmm_activation that the inference path uses
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        model(x)
    return counter.get_total_flops()


def throughput(model, size, batch, warmup=3, rep=15):
    x = torch.randn(batch, 3, size, size, device="cuda")
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        for _ in range(rep):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    ms = statistics.median(times)
    return batch / ms * 1000, ms


def gpu_rows(names, save):
    """One row per model; ``save(rows)`` after each, so a run cut short keeps what it measured."""
    rows = []
    for label, (name, overrides) in names:
        try:
            rows.append(gpu_row(label, name, overrides))
        except Exception as exc:  # record and go on: one failing variant must not cost the run
            print(f"{label}: failed: {exc!r}", flush=True)
            rows.append(dict(model=label, error=repr(exc)))
            torch.cuda.empty_cache()
        save(rows)
    return rows


def scan_knob_rows(names=("ssmamba_small", "ssmamba_base"), knobs=SCAN_KNOBS, save=None):
    """Model images/s over the Triton forward kernel's channels per program, warps and unrolling;
    ``save(rows)`` after each row."""
    from napari_ssmamba.model.ops import triton_scan

    saved = triton_scan.FWD_BLOCK_D, triton_scan.FWD_WARPS, triton_scan.UNROLL
    rows = []
    for block_d, warps, unroll in knobs:
        triton_scan.FWD_BLOCK_D, triton_scan.FWD_WARPS, triton_scan.UNROLL = block_d, warps, unroll
        for name in names:
            row = dict(model=name, block_d=block_d, warps=warps, unroll=unroll)
            for size, batch in SIZES.items():
                model = create_model(name).cuda().eval().to(memory_format=torch.channels_last)
                row[f"img_s_{size}"] = throughput(model, size, batch)[0]
            print(f"knobs {block_d:3d}/{warps}/{unroll:2d} {name:14s} 224: {row['img_s_224']:8.0f}   "
                  f"512: {row['img_s_512']:7.0f} img/s", flush=True)
            rows.append(row)
            if save:
                save(rows)
    triton_scan.FWD_BLOCK_D, triton_scan.FWD_WARPS, triton_scan.UNROLL = saved
    return rows


def gpu_row(label, name, overrides):
    row = dict(model=label)
    for size, batch in SIZES.items():
        model = build(name, size, overrides).cuda().eval()
        if name == "resnet50" or name.startswith("ssmamba"):
            model = model.to(memory_format=torch.channels_last)
        if size == 224:
            row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        row[f"gflops_{size}"] = count_flops(model, size, "cuda") / 1e9
        try:
            row[f"img_s_{size}"], row[f"ms_batch_{size}"] = throughput(model, size, batch)
        except torch.cuda.OutOfMemoryError:
            row[f"img_s_{size}"] = None
        del model
        torch.cuda.empty_cache()
    print(f"{label:26s} {row['params_m']:7.1f} M  {row['gflops_224']:6.2f} GFLOPs  "
          f"224: {row['img_s_224'] or 0:8.0f} img/s   512: {row['img_s_512'] or 0:7.0f} img/s", flush=True)
    return row


def profile(name, size=224, batch=256):
    model = create_model(name).cuda().eval()
    x = torch.randn(batch, 3, size, size, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    print(table)
    return table


def check_backends(name="ssmamba_small"):
    """Relative difference of logits between the Triton and reference scan paths, float32."""
    model = create_model(name).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    out = {}
    with torch.inference_mode():
        for backend in ("triton", "mamba_ssm", "cpu"):
            try:
                model.set_scan_backend(backend)
                out[backend] = model(x).float()
            except Exception as exc:  # an unavailable backend is recorded, not fatal
                print(f"scan backend {backend}: {exc!r}", flush=True)
    ref = out["cpu"]
    return {b: ((y - ref).norm() / ref.norm()).item() for b, y in out.items()}


def cpu_tile_ms(name="ssmamba_tiny", threads=2, batches=(1, 8, 16, 32), runs=7):
    """ms per 224 px tile: median of ``runs`` timed forwards per batch size, with every run kept and
    the load average before and after (the machine may be shared)."""
    torch.set_num_threads(threads)
    model = create_model(name, num_classes=3).eval()
    result = dict(threads=threads, runs=runs, load_average_before=os.getloadavg())
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224)
            model(x)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
            per_tile = [t / batch * 1000 for t in times]
            result[f"ms_per_tile_batch{batch}"] = statistics.median(per_tile)
            result[f"ms_per_tile_batch{batch}_runs"] = per_tile
            print(f"{name} CPU {threads} threads batch {batch}: {statistics.median(per_tile):.1f} ms/tile "
                  f"(runs {min(per_tile):.1f}-{max(per_tile):.1f}; load {os.getloadavg()[0]:.2f})", flush=True)
    result["load_average_after"] = os.getloadavg()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--scan-knobs", action="store_true",
                        help="time small and base over the Triton kernel's block sizes")
    parser.add_argument("--scan-knobs-only", action="store_true", help="only the --scan-knobs part")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  torch=torch.__version__, python=platform.python_version())
    if args.cpu:
        result.update(device=platform.processor() or platform.machine(), cpu=cpu_tile_ms())
    else:
        torch.backends.cudnn.benchmark = True
        result["device"] = torch.cuda.get_device_name()
        if args.scan_knobs_only:
            result["scan_knobs"] = scan_knob_rows(
                save=lambda rows: args.out.write_text(json.dumps(dict(result, scan_knobs=rows), indent=1)))
            return
        result["logit_rel_diff_vs_cpu_path"] = check_backends()
        print("scan backends vs cpu path (fp32 logits):", result["logit_rel_diff_vs_cpu_path"], flush=True)
        names = [(n, (n, None)) for n in SSMAMBA + TIMM]
        if args.variants:
            names += list(VARIANTS.items())

        def save(rows):
            args.out.write_text(json.dumps(dict(result, rows=rows), indent=1))

        result["rows"] = gpu_rows(names, save)
        if args.profile:
            result["profile_ssmamba_small"] = profile("ssmamba_small")
            save(result["rows"])
        if args.scan_knobs:
            result["scan_knobs"] = scan_knob_rows()
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
