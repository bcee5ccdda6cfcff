"""Our pipeline against WSInfer's on one slide with the same model, side by side in one run (CPU).

    python bench/bench_wsinfer.py SLIDE --wsinfer-python ENV/bin/python [--model CKPT]
        [--rounds 2] [--workers 2] [--batch-size 32] [--out wsinfer.json]

WSInfer (0.6) runs TorchScript models, so the model (the bundled default or ``--model``) is
traced once (``torch.jit.trace``; its outputs are checked against the eager model's) and written
with a WSInfer config: the card's tile size, µm per pixel, class names and normalisation. Then,
alternating, ``--rounds`` times, each a fresh process timed from start to exit:

- ``ssmamba classify SLIDE --device cpu``: tissue, tiles, the model, the five exports;
- ``wsinfer run``: tissue, patches (an HDF5 file), the model behind a DataLoader with
  ``--workers`` workers and batches of ``--batch-size``, CSV and GeoJSON.

Before them, each model alone on random tiles, best of 3: ours as ``predict_tiles`` runs it
(eager, normalised inside, our batch size), the traced module the same way, and WSInfer's
TorchScript module in WSInfer's own interpreter (its torch) at its batch size. Last, the tiles that both classified (the same level-0 box) are
compared: argmax agreement and mean |difference| of the probabilities.

WSInfer needs an environment of its own, run offline as ``../shared/bench/README.md`` says; this
script gives it an empty model-zoo registry in a temporary HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

MODEL_ALONE_IN_WSINFER = """
import sys, time, torch
model = torch.jit.load(sys.argv[1], map_location="cpu").eval()
batch, size, tiles = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x = torch.randn(batch, 3, size, size)
best = float("inf")
with torch.no_grad():
    model(x)
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(tiles // batch):
            model(x).softmax(dim=1)
        best = min(best, time.perf_counter() - start)
print(tiles // batch * batch / best, torch.__version__, torch.get_num_threads())
"""


def export_for_wsinfer(model, card, folder: Path):
    """The model traced to TorchScript, and its file and WSInfer config in ``folder``; also the
    largest |difference| between the traced and the eager model's logits on a batch of another
    size."""
    import torch

    size = card.tile_size
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, torch.randn(2, 3, size, size), check_trace=False)
        x = torch.randn(5, 3, size, size)
        difference = float((traced(x) - model(x)).abs().max())
    model_path, config_path = folder / "model.pt", folder / "config.json"
    traced.save(str(model_path))
    config = {
        "spec_version": "1.0",
        "architecture": card.arch,
        "num_classes": len(card.class_names),
        "class_names": list(card.class_names),
        "patch_size_pixels": size,
        "spacing_um_px": card.mpp,
        "transform": [
            {"name": "Resize", "arguments": {"size": size}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": list(card.mean), "std": list(card.std)}},
        ],
    }
    config_path.write_text(json.dumps(config, indent=2))
    return traced, model_path, config_path, difference


def our_model_alone(model, card, tiles: int) -> float:
    """Tiles per second of ``model`` as ``predict_tiles`` runs it on the CPU (its
    ``TileClassifier``, at our batch size), best of 3."""
    import torch

    from napari_ssmamba.inference.predict import CPU_BATCH_SIZE, TileClassifier

    classify = TileClassifier(model, card, torch.device("cpu"), attention=False)
    batch = torch.randint(
        0, 256, (CPU_BATCH_SIZE, card.tile_size, card.tile_size, 3), dtype=torch.uint8
    )
    classify(batch)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(tiles // CPU_BATCH_SIZE):
            classify(batch)
        best = min(best, time.perf_counter() - start)
    return tiles // CPU_BATCH_SIZE * CPU_BATCH_SIZE / best


def timed(command: list[str], env: dict | None = None) -> float:
    """Seconds from the start of ``command`` to its exit; CalledProcessError with its output if it
    fails."""
    start = time.perf_counter()
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
    return seconds


def read_tiles(csv_path: Path, class_names) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n, 4) int64, probabilities (n, classes)) of a ``minx,miny,width,height,prob_*`` CSV."""
    header = csv_path.read_text().splitlines()[0].split(",")
    table = np.loadtxt(csv_path, delimiter=",", skiprows=1, ndmin=2)
    columns = [header.index(c) for c in ("minx", "miny", "width", "height")]
    probs = [header.index(f"prob_{name}") for name in class_names]
    return table[:, columns].astype(np.int64), table[:, probs]


def agreement(ours, theirs) -> dict:
    """How the probabilities of the tiles both classified (same box) compare."""
    our_index = {tuple(box): i for i, box in enumerate(ours[0].tolist())}
    pairs = [
        (our_index[tuple(box)], j)
        for j, box in enumerate(theirs[0].tolist())
        if tuple(box) in our_index
    ]
    if not pairs:
        return {"tiles_in_both": 0}
    i, j = (np.array(v) for v in zip(*pairs, strict=True))
    p, q = ours[1][i], theirs[1][j]
    return {
        "tiles_in_both": len(pairs),
        "argmax_agreement": float((p.argmax(1) == q.argmax(1)).mean()),
        "mean_abs_probability_difference": float(np.abs(p - q).mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("slide", type=Path)
    parser.add_argument(
        "--wsinfer-python", type=Path, required=True, help="the python of WSInfer's environment"
    )
    parser.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="WSInfer's DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=32, help="WSInfer's batch size")
    parser.add_argument("--alone-tiles", type=int, default=128, help="tiles per model-alone timing")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import environment

    from napari_ssmamba.model.checkpoint import default_checkpoint, load_checkpoint

    checkpoint = args.model or default_checkpoint()
    model, card = load_checkpoint(checkpoint)
    model.eval()
    slide = args.slide.resolve()
    out = {
        "benchmark": "bench_wsinfer",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slide": slide.name,
        "model": {"checkpoint": str(checkpoint), "arch": card.arch},
        "environment": environment(torch.device("cpu")),
        "wsinfer": {"workers": args.workers, "batch_size": args.batch_size},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        traced, model_path, config_path, difference = export_for_wsinfer(model, card, tmp)
        out["traced_vs_eager_max_abs_logit_difference"] = difference
        home = tmp / "home"
        (home / ".wsinfer-zoo").mkdir(parents=True)
        (home / ".wsinfer-zoo" / "wsinfer-zoo-registry.json").write_text('{"models": {}}')
        wsinfer_env = {
            **os.environ,
            "HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": "",
        }
        slides = tmp / "slides"
        slides.mkdir()
        (slides / slide.name).symlink_to(slide)
        wsinfer_bin = args.wsinfer_python.parent / "wsinfer"
        wsinfer_version = subprocess.run(
            [str(args.wsinfer_python), "-c", "import wsinfer; print(wsinfer.__version__)"],
            env=wsinfer_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        out["wsinfer"]["version"] = wsinfer_version

        ours_alone = our_model_alone(model, card, args.alone_tiles)
        traced_alone = our_model_alone(traced, card, args.alone_tiles)
        alone = subprocess.run(
            [
                str(args.wsinfer_python),
                "-c",
                MODEL_ALONE_IN_WSINFER,
                str(model_path),
                str(args.batch_size),
                str(card.tile_size),
                str(args.alone_tiles),
            ],
            env=wsinfer_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        out["model_alone_tiles_per_s"] = {
            "ours": ours_alone,
            "traced_in_our_torch": traced_alone,
            "wsinfer": float(alone[0]),
        }
        out["wsinfer"].update(torch=alone[1], torch_threads=int(alone[2]))
        print(
            f"model alone: ours {ours_alone:.1f} tiles/s (traced {traced_alone:.1f}), "
            f"WSInfer's {float(alone[0]):.1f} tiles/s",
            file=sys.stderr,
        )

        seconds = {"ours": [], "wsinfer": []}
        for round_ in range(args.rounds):
            ours_dir, wsinfer_dir = tmp / f"ours{round_}", tmp / f"wsinfer{round_}"
            seconds["ours"].append(
                timed(
                    [
                        sys.executable,
                        "-m",
                        "napari_ssmamba",
                        "classify",
                        str(slide),
                        "--device",
                        "cpu",
                        *(["--model", str(args.model)] if args.model else []),
                        "--out",
                        str(ours_dir),
                    ]
                )
            )
            seconds["wsinfer"].append(
                timed(
                    [
                        str(wsinfer_bin),
                        "run",
                        "-i",
                        str(slides),
                        "-o",
                        str(wsinfer_dir),
                        "-c",
                        str(config_path),
                        "-p",
                        str(model_path),
                        "-b",
                        str(args.batch_size),
                        "-n",
                        str(args.workers),
                    ],
                    env=wsinfer_env,
                )
            )
            print(
                f"round {round_}: ours {seconds['ours'][-1]:.1f} s, WSInfer {seconds['wsinfer'][-1]:.1f} s",
                file=sys.stderr,
            )
        stem = slide.stem
        ours = read_tiles(ours_dir / f"{stem}.tiles.csv", card.class_names)
        theirs = read_tiles(wsinfer_dir / "model-outputs-csv" / f"{stem}.csv", card.class_names)
        record = json.loads((ours_dir / f"{stem}.run.json").read_text())
    out["tiles"] = {"ours": len(ours[0]), "wsinfer": len(theirs[0])}
    out["end_to_end_s"] = seconds
    best = {k: min(v) for k, v in seconds.items()}
    out["end_to_end_tiles_per_s"] = {k: out["tiles"][k] / best[k] for k in best}
    out["ours_timings_s_last_round"] = record.get("timings_s")
    out["agreement"] = agreement(ours, theirs)
    print(
        json.dumps({k: out[k] for k in ("tiles", "end_to_end_tiles_per_s", "agreement")}),
        file=sys.stderr,
    )
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
