"""The selective-scan kernels alone at vision shapes, on a CUDA GPU.

For each shape: our Triton kernel and mamba-ssm's ``selective_scan_fn`` (when installed), forward and
forward+backward, median of CUDA-event timings; effective bandwidth (u, delta, y of batch x dim x L and
B, C of batch x N x L, each counted once) against a device-to-device copy measured in the same run;
and agreement with ``selective_scan_ref`` in float32 on a slice of the batch. Then the DMS grid scan
(four directions, fused) against the same work done by gathering each direction and one grouped call.

    python bench/bench_scan.py OUT.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

from napari_ssmamba.model.ops import (
    available_backends,
    selective_scan,
    selective_scan_ref,
    triton_scan,
)
from napari_ssmamba.model.ops.grid_scan import grid_scan, grid_scan_reference

FLAT_SHAPES = [  # (batch, dim, L, N)
    (256, 768, 196, 16),
    (64, 768, 1024, 16),
    (256, 384, 3136, 16),
    (32, 1536, 196, 16),
    (256, 256, 196, 8),
    (64, 256, 1024, 8),
]
GRID_SHAPES = [  # (batch, H, W, E, N, directions): DMS stages of ssmamba_small / base
    (256, 14, 14, 256, 8, 4),
    (256, 7, 7, 256, 8, 4),
    (64, 32, 32, 256, 8, 4),
    (256, 14, 14, 384, 8, 4),
]


def bench(fn, warmup=3, rep=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for i in range(rep):
        if i == 3 and min(times) > 50:  # slow cases: a few repetitions tell enough
            break
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth():
    src = torch.randn(256 * 1024**2, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6  # GB/s, bytes read + written


def flat_inputs(batch, dim, L, N, dtype=torch.bfloat16, device="cuda"):
    return dict(
        u=torch.randn(batch, dim, L, device=device, dtype=dtype),
        delta=(torch.randn(batch, dim, L, device=device) * 0.5).to(dtype),
        A=-torch.rand(dim, N, device=device) * 4 - 0.1,
        B=torch.randn(batch, N, L, device=device, dtype=dtype),
        C=torch.randn(batch, N, L, device=device, dtype=dtype),
        D=torch.randn(dim, device=device),
        delta_bias=torch.randn(dim, device=device) * 0.3,
        delta_softplus=True,
    )


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check_flat(backend, batch, dim, L, N):
    """Relative errors of y and of every gradient against the float32 reference, on 2 batch items."""
    ins = flat_inputs(2, dim, L, N, dtype=torch.float32)
    for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"):
        ins[k].requires_grad_()
    ref_ins = {k: v.detach().clone().requires_grad_() if torch.is_tensor(v) else v for k, v in ins.items()}
    y = selective_scan(**ins, backend=backend)
    y_ref = selective_scan_ref(**ref_ins)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    errs = {"y": rel_err(y, y_ref)}
    errs.update({f"d{k}": rel_err(ins[k].grad, ref_ins[k].grad) for k in ("u", "delta", "A", "B", "C", "D")})
    return errs


def run_flat(copy_gbs, backends):
    rows = []
    for batch, dim, L, N in FLAT_SHAPES:
        ins = flat_inputs(batch, dim, L, N)
        nbytes = (3 * batch * dim * L + 2 * batch * N * L) * 2
        for backend in backends:
            try:
                rows.append(flat_row(ins, nbytes, copy_gbs, backend, batch, dim, L, N))
            except Exception as exc:  # record and go on
                print(f"flat {batch}x{dim}x{L} N={N} {backend}: failed: {exc!r}"[:2000], flush=True)
                rows.append(dict(kind="flat", shape=[batch, dim, L, N], backend=backend, error=repr(exc)))
        del ins
    return rows


def flat_row(ins, nbytes, copy_gbs, backend, batch, dim, L, N):
    row = dict(kind="flat", shape=[batch, dim, L, N], backend=backend, dtype="bf16")
    fwd = bench(lambda: selective_scan(**ins, backend=backend))
    grad_ins = {k: v.detach().requires_grad_() if k in ("u", "delta", "B", "C") else v
                for k, v in ins.items()}
    dy = torch.randn(batch, dim, L, device="cuda", dtype=torch.bfloat16)
    fwd_bwd = bench(lambda: selective_scan(**grad_ins, backend=backend).backward(dy))
    row.update(fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, gbs=nbytes / fwd / 1e6,
               pct_copy=100 * nbytes / fwd / 1e6 / copy_gbs,
               err_fp32=check_flat(backend, batch, dim, min(L, 1024), N))
    print(f"flat {batch}x{dim}x{L} N={N} {backend:9s} fwd {fwd:7.3f} ms ({row['gbs']:6.0f} GB/s,"
          f" {row['pct_copy']:4.1f}% of copy)  fwd+bwd {fwd_bwd:7.3f} ms  err y "
          f"{row['err_fp32']['y']:.1e} max grad {max(row['err_fp32'].values()):.1e}", flush=True)
    return row


def run_grid(copy_gbs, backends):
    rows = []
    for batch, H, W, E, N, K in GRID_SHAPES:
        L = H * W
        ins = dict(u=torch.randn(batch, L, E, device="cuda", dtype=torch.bfloat16),
                   delta=(torch.randn(batch, L, E, device="cuda") * 0.5).to(torch.bfloat16),
                   A=-torch.rand(K, E, N, device="cuda") * 4 - 0.1,
                   B=torch.randn(batch, L, N, device="cuda", dtype=torch.bfloat16),
                   C=torch.randn(batch, L, N, device="cuda", dtype=torch.bfloat16),
                   D=torch.randn(K, E, device="cuda"), delta_bias=torch.randn(K, E, device="cuda") * 0.3)
        # fewest bytes: u and delta read once, y written once per direction, B and C read once
        nbytes = (2 * batch * L * E + K * batch * L * E + 2 * batch * L * N) * 2
        small = {k: v[:2].float() if k in ("u", "delta", "B", "C") else v for k, v in ins.items()}
        y_ref = grid_scan_reference(**small, hw=(H, W), backend="ref")
        for backend in backends:
            try:
                rows.append(grid_row(ins, small, y_ref, nbytes, copy_gbs, backend, batch, H, W, E, N, K))
            except Exception as exc:  # record and go on
                print(f"grid {batch}x{H}x{W}x{E} {backend}: failed: {exc!r}"[:2000], flush=True)
                rows.append(dict(kind="grid", shape=[batch, H, W, E, N, K], backend=backend, error=repr(exc)))
    return rows


def grid_row(ins, small, y_ref, nbytes, copy_gbs, backend, batch, H, W, E, N, K):
    L = H * W
    if backend == "triton":
        fn = lambda: grid_scan(**ins, hw=(H, W), backend="triton")
        err = rel_err(grid_scan(**small, hw=(H, W), backend="triton"), y_ref)
    else:
        fn = lambda: grid_scan_reference(**ins, hw=(H, W), backend=backend)
        err = rel_err(grid_scan_reference(**small, hw=(H, W), backend=backend), y_ref)
    grad_ins = {k: v.detach().requires_grad_() if k in ("u", "delta", "B", "C") else v
                for k, v in ins.items()}
    dy = torch.randn(K, batch, L, E, device="cuda", dtype=torch.bfloat16)
    if backend == "triton":
        fb = lambda: grid_scan(**grad_ins, hw=(H, W), backend="triton").backward(dy)
    else:
        fb = lambda: grid_scan_reference(**grad_ins, hw=(H, W), backend=backend).backward(dy)
    fwd, fwd_bwd = bench(fn), bench(fb)
    row = dict(kind="grid", shape=[batch, H, W, E, N, K], backend=backend, fwd_ms=fwd,
               fwd_bwd_ms=fwd_bwd, gbs=nbytes / fwd / 1e6,
               pct_copy=100 * nbytes / fwd / 1e6 / copy_gbs, err_fp32=err)
    print(f"grid {batch}x{H}x{W}x{E} N={N} K={K} {backend:9s} fwd {fwd:7.3f} ms "
          f"({row['gbs']:6.0f} GB/s, {row['pct_copy']:4.1f}%)  fwd+bwd {fwd_bwd:7.3f} ms  "
          f"err {err:.1e}", flush=True)
    return row


def sweep_blocks(copy_gbs):
    """Forward time of the Triton kernel over channels per program, warps and unrolling."""
    rows = []
    saved = triton_scan.FWD_BLOCK_D, triton_scan.FWD_WARPS, triton_scan.UNROLL
    for block_d, warps, unroll in [(64, 2, 16), (128, 4, 8), (128, 4, 16), (256, 8, 8), (128, 2, 8),
                                   (256, 4, 8), (64, 1, 8), (128, 4, 4)]:
        triton_scan.FWD_BLOCK_D, triton_scan.FWD_WARPS, triton_scan.UNROLL = block_d, warps, unroll
        for batch, dim, L, N in [(256, 768, 196, 16), (256, 256, 196, 8)]:
            ins = flat_inputs(batch, dim, L, N)
            ms = bench(lambda: selective_scan(**ins, backend="triton"))
            nbytes = (3 * batch * dim * L + 2 * batch * N * L) * 2
            rows.append(dict(block_d=block_d, warps=warps, unroll=unroll, shape=[batch, dim, L, N],
                             fwd_ms=ms, pct_copy=100 * nbytes / ms / 1e6 / copy_gbs))
            print(f"sweep block_d {block_d:3d} warps {warps} unroll {unroll:2d} {batch}x{dim}x{L} N={N}: "
                  f"{ms:.3f} ms ({rows[-1]['pct_copy']:.1f}%)", flush=True)
        hw_ins = dict(u=torch.randn(256, 196, 256, device="cuda", dtype=torch.bfloat16),
                      delta=torch.randn(256, 196, 256, device="cuda", dtype=torch.bfloat16),
                      A=-torch.rand(4, 256, 8, device="cuda"), B=torch.randn(256, 196, 8, device="cuda"),
                      C=torch.randn(256, 196, 8, device="cuda"), D=torch.randn(4, 256, device="cuda"),
                      delta_bias=torch.randn(4, 256, device="cuda"))
        ms = bench(lambda: grid_scan(**hw_ins, hw=(14, 14), backend="triton"))
        rows.append(dict(block_d=block_d, warps=warps, unroll=unroll, shape=[256, 14, 14, 256, 8, 4],
                         fwd_ms=ms))
        print(f"sweep block_d {block_d:3d} warps {warps} unroll {unroll:2d} grid 256x14x14x256: {ms:.3f} ms",
              flush=True)
    triton_scan.FWD_BLOCK_D, triton_scan.FWD_WARPS, triton_scan.UNROLL = saved
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sweep", action="store_true", help="also sweep the kernel's block sizes")
    args = parser.parse_args()
    torch.manual_seed(0)
    backends = [b for b in ("triton", "mamba_ssm") if b in available_backends("cuda")]
    copy_gbs = copy_bandwidth()
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s; backends {backends}", flush=True)
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  device=torch.cuda.get_device_name(), torch=torch.__version__,
                  python=platform.python_version(), copy_gbs=copy_gbs, backends=backends)
    result["flat"] = run_flat(copy_gbs, backends)
    result["grid"] = run_grid(copy_gbs, backends)
    if args.sweep:
        result["sweep"] = sweep_blocks(copy_gbs)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
