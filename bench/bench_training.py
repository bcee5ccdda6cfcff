"""Training throughput: MAMIM pretraining and fine-tuning images/s per model size, bf16 autocast.

    python bench/bench_training.py --out results.json [--sizes ssmamba_tiny ssmamba_small] [--steps 20]

Random tiles at 224 px; AdamW steps as the training loop runs them (autocast bf16 on CUDA,
float32 on CPU). Reports images/s after ``--warmup`` steps, peak GPU memory, and the device.
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(model, step, batch, device, steps, warmup, amp):
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    seconds = time.perf_counter() - started
    return {
        "images_per_s": steps * batch[0].shape[0] / seconds,
        "step_ms": 1000 * seconds / steps,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    import torch
    import torch.nn.functional as F

    from napari_ssmamba.model import create_model
    from napari_ssmamba.training.mamim import build_masked_image_model, random_masks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", nargs="+", default=["ssmamba_tiny", "ssmamba_small", "ssmamba_base"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    batch_size = args.batch_size or (128 if amp else 8)
    results = {"device": torch.cuda.get_device_name() if amp else platform.processor() or "cpu",
               "torch": torch.__version__, "amp": "bf16" if amp else "fp32", "batch_size": batch_size,
               "tile_size": args.tile_size, "threads": torch.get_num_threads(), "sizes": {}}
    x = torch.randn(batch_size, 3, args.tile_size, args.tile_size, device=device)
    labels = torch.randint(0, 3, (batch_size,), device=device)
    for arch in args.sizes:
        torch.manual_seed(0)
        classifier = create_model(arch, num_classes=3).to(device)
        classifier.mask_token.requires_grad_(False)
        finetune = bench(classifier, lambda m, b: F.cross_entropy(m(b[0]).float(), b[1], label_smoothing=0.1),
                         (x, labels), device, args.steps, args.warmup, amp)
        del classifier
        mim = build_masked_image_model(arch).to(device)
        grid = (args.tile_size // mim.mask_patch_size,) * 2
        mask = random_masks(batch_size, grid, 0.6, torch.Generator().manual_seed(0)).to(device)
        pretrain = bench(mim, lambda m, b: m(b[0], b[1]), (x, mask), device, args.steps, args.warmup, amp)
        del mim
        results["sizes"][arch] = {"finetune": finetune, "pretrain_mamim": pretrain}
        print(arch, json.dumps(results["sizes"][arch]), flush=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
