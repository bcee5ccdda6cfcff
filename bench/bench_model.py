"""Model throughput: SSMamba sizes beside timm's ViT-S/B/L and ResNet-50, in one run.

GPU (default): params, FLOPs (torch.utils.flop_counter, one image: matmuls, convolutions and
attention; the scans and elementwise work are not counted, as for timm's models), and images/s in
eager bf16 autocast under inference_mode at 224 px (batch 256) and 512 px (batch 64): warm-up, then
the median of CUDA-event timings. Extra SSMamba variants (``--variants``) explore the design; a
profile of ssmamba_small lists where its time goes.

CPU (``--cpu``): ms per 224 px tile for ssmamba_tiny with torch.set_num_threads(2), float32.

    python bench/bench_model.py OUT.json [--variants] [--profile]
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
VARIANTS = {  # label -> (registered name, overrides)
    "small/d_state4": ("ssmamba_small", dict(d_state=4)),
    "small/mlp2": ("ssmamba_small", dict(mlp_ratio=2.0)),
    "small/depths1262": ("ssmamba_small", dict(depths=(1, 2, 6, 2))),
    "small/no-pooled-scale": ("ssmamba_small", dict(pooled_scale=False)),
    "small/2-directions": ("ssmamba_small", dict(num_directions=2)),
    "small/mamba_ssm-scan": ("ssmamba_small", dict(scan_backend="mamba_ssm")),
    "base/depths2282": ("ssmamba_base", dict(depths=(2, 2, 8, 2))),
}


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


def gpu_rows(names):
    rows = []
    for label, (name, overrides) in names:
        try:
            rows.append(gpu_row(label, name, overrides))
        except Exception as exc:  # record and go on: one failing variant must not cost the run
            print(f"{label}: failed: {exc!r}", flush=True)
            rows.append(dict(model=label, error=repr(exc)))
            torch.cuda.empty_cache()
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


def cpu_tile_ms(name="ssmamba_tiny", threads=2, batches=(1, 8)):
    torch.set_num_threads(threads)
    model = create_model(name, num_classes=3).eval()
    result = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224)
            model(x)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
            result[f"ms_per_tile_batch{batch}"] = statistics.median(times) / batch * 1000
            print(f"{name} CPU {threads} threads batch {batch}: "
                  f"{result[f'ms_per_tile_batch{batch}']:.1f} ms/tile", flush=True)
    result["load_average"] = os.getloadavg()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  torch=torch.__version__, python=platform.python_version())
    if args.cpu:
        result.update(device=platform.processor() or platform.machine(), cpu=cpu_tile_ms())
    else:
        torch.backends.cudnn.benchmark = True
        result["device"] = torch.cuda.get_device_name()
        result["logit_rel_diff_vs_cpu_path"] = check_backends()
        print("scan backends vs cpu path (fp32 logits):", result["logit_rel_diff_vs_cpu_path"], flush=True)
        names = [(n, (n, None)) for n in SSMAMBA + TIMM]
        if args.variants:
            names += list(VARIANTS.items())
        result["rows"] = gpu_rows(names)
        if args.profile:
            result["profile_ssmamba_small"] = profile("ssmamba_small")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
