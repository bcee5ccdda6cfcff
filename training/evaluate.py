"""Classification metrics in numpy: accuracy, balanced accuracy, macro F1, per-class AUROC, confusion.

``classification_metrics`` returns a JSON-ready dict; ``format_metrics`` renders it as a table.
``predict`` runs a model over a dataset and ``evaluate_checkpoint`` ties both to a checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_ssmamba._atomic import atomic_open


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes in rows and predicted classes in columns."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve from the Mann-Whitney U statistic (ties count half); NaN if undefined."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks over runs of tied scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class AUROC and confusion matrix.

    ``probs`` is (N, num_classes). Balanced accuracy averages recall over the classes present in
    ``y_true``; macro F1 averages over the classes present in ``y_true`` or the predictions (as
    scikit-learn does). An AUROC that is undefined (class absent or alone) is reported as None.
    ``classes_without_tiles`` lists the classes absent from ``y_true``: nothing here measures them.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(class_names)
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    tp = np.diag(matrix).astype(np.float64)
    recall = np.divide(tp, support, out=np.zeros(num_classes), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(num_classes), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(num_classes), where=denom > 0)
    present = support > 0
    seen = present | (predicted > 0)
    auroc = [binary_auroc(y_true == c, probs[:, c]) for c in range(num_classes)]
    return {
        "n": len(y_true),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else math.nan,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else math.nan,
        "macro_f1": float(f1[seen].mean()) if seen.any() else math.nan,
        "per_class": {
            name: {
                "support": int(support[c]),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "auroc": None if math.isnan(auroc[c]) else auroc[c],
            }
            for c, name in enumerate(class_names)
        },
        "class_names": list(class_names),
        "classes_without_tiles": [name for c, name in enumerate(class_names) if not present[c]],
        "confusion_matrix": matrix.tolist(),
    }


def format_metrics(metrics: dict) -> str:
    """A plain-text table of the summary, per-class figures and confusion matrix."""
    names = metrics["class_names"]
    width = max(8, *(len(n) for n in names))
    lines = [
        f"n={metrics['n']}  accuracy={metrics['accuracy']:.4f}  "
        f"balanced_accuracy={metrics['balanced_accuracy']:.4f}  macro_f1={metrics['macro_f1']:.4f}",
        "",
        f"{'class':<{width}}  support  precision  recall      f1   auroc",
    ]
    for name in names:
        row = metrics["per_class"][name]
        auroc = "     -" if row["auroc"] is None else f"{row['auroc']:6.3f}"
        lines.append(
            f"{name:<{width}}  {row['support']:7d}  {row['precision']:9.3f}  {row['recall']:6.3f}"
            f"  {row['f1']:6.3f}  {auroc}"
        )
    if metrics["classes_without_tiles"]:
        absent = ", ".join(metrics["classes_without_tiles"])
        lines += ["", f"not measured, no tiles here: {absent}"]
    lines += ["", "confusion (rows true, columns predicted)"]
    lines.append(" " * width + "  " + " ".join(f"{n[:7]:>7}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:7d}" for v in row))
    return "\n".join(lines)


def write_metrics(metrics: dict, path: str | Path) -> Path:
    """Write ``metrics`` as JSON, atomically."""
    path = Path(path)
    with atomic_open(path) as fh:
        json.dump(metrics, fh, indent=2)
    return path


def predict(model, dataset, *, batch_size: int = 64, device="cpu", amp: bool = False,
            num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) and labels (N,) of ``dataset`` (a TileDataset without augmentation)."""
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    device = torch.device(device)
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(images)
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            labels.append(targets.numpy())
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    return np.concatenate(probs), np.concatenate(labels)


def evaluate_checkpoint(checkpoint, tiles, *, batch_size: int = 64, device: str = "cpu",
                        num_workers: int = 0) -> dict:
    """Metrics of the model in ``checkpoint`` on ``tiles`` (a TileSet whose classes the card names)."""
    from napari_ssmamba.model import load_checkpoint

    model, card = load_checkpoint(checkpoint, device=device)
    return _metrics(model, card, tiles, batch_size=batch_size, device=device, num_workers=num_workers)


def _metrics(model, card, tiles, *, batch_size: int, device: str, num_workers: int = 0) -> dict:
    from .data import TileDataset

    tiles = tiles.with_classes(card.class_names)
    dataset = TileDataset(tiles, mean=card.mean, std=card.std, augment=None)
    probs, labels = predict(model, dataset, batch_size=batch_size, device=device,
                            amp=device.startswith("cuda"), num_workers=num_workers)
    return classification_metrics(labels, probs, card.class_names)


def evaluate_from_config(checkpoint, data, *, seed: int = 0, batch_size: int = 64, device: str = "cpu") -> dict:
    """Metrics of ``checkpoint`` on the tiles of a :class:`DataConfig` (its ``val_sources`` if any),
    cut at the tile size and MPP of the model's card, as classification cuts them."""
    import warnings

    from napari_ssmamba.model import load_checkpoint

    from .data import tiles_from_sources

    model, card = load_checkpoint(checkpoint, device=device)
    if data.tile_size != card.tile_size or card.mpp not in [float(m) for m in data.mpps]:
        warnings.warn(
            f"evaluating at the model's {card.tile_size} px and {card.mpp:g} µm/px (its card), "
            f"not at the data settings' {data.tile_size} px and "
            f"{', '.join(f'{m:g}' for m in data.mpps)} µm/px",
            stacklevel=2,
        )
    sources = data.val_sources or data.sources
    tiles = tiles_from_sources(sources, tile_size=card.tile_size, mpps=[card.mpp],
                               class_names=data.class_names, seed=seed)
    return _metrics(model, card, tiles, batch_size=batch_size, device=device)
