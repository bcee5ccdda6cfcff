"""DDP scaling of SSMamba fine-tuning: images/s on one GPU and on all GPUs of the host.

Each rank trains on its own batch of random tiles (weak scaling: the global batch grows with the
ranks), bf16 autocast, AdamW, the same step as ``training/`` (cross-entropy with label smoothing).
Run with torchrun, once per world size:

    torchrun --nproc_per_node=1 bench/bench_ddp.py --out ddp_1.json
    torchrun --nproc_per_node=2 bench/bench_ddp.py --out ddp_2.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from napari_ssmamba.model import convert_sync_batchnorm, create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default="ssmamba_small")
    parser.add_argument("--batch-size", type=int, default=128, help="per rank")
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    torch.manual_seed(rank)
    model = convert_sync_batchnorm(create_model(args.arch, num_classes=3))
    model.mask_token.requires_grad_(False)  # only MAMIM uses it, as in training/finetune.py
    model = torch.nn.parallel.DistributedDataParallel(model.to(device), device_ids=[device.index])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, 3, args.tile_size, args.tile_size, device=device)
    y = torch.randint(0, 3, (args.batch_size,), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - started
    if rank == 0:
        record = {
            "arch": args.arch, "world_size": world, "batch_per_rank": args.batch_size,
            "tile_size": args.tile_size, "steps": args.steps, "seconds": seconds,
            "images_per_s": args.steps * args.batch_size * world / seconds,
            "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
        }
        print(json.dumps(record))
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
