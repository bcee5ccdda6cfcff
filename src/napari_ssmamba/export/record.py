"""The run record: what ran (model card hash, package versions, parameters, timings) and what it
wrote (the sha256 of every output). Written last; a record whose hashes match marks completion."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from napari_ssmamba._atomic import atomic_open
from napari_ssmamba._provenance import file_sha256, package_versions
from napari_ssmamba.export.paths import output_paths

RECORD_FORMAT = "napari-ssmamba run record"
RECORD_VERSION = 1


def card_dict(card) -> dict:
    """The model card as a JSON-ready dict."""
    import dataclasses

    if hasattr(card, "to_dict"):
        data = card.to_dict()
    elif dataclasses.is_dataclass(card):
        data = dataclasses.asdict(card)
    else:
        data = dict(vars(card))
    return json.loads(json.dumps(data, default=_jsonable))


def card_sha256(card) -> str:
    """sha256 of the model card's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(card_dict(card), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def run_record(result, outputs: dict[str, Path], run_info: dict | None = None) -> dict:
    """The record of ``result`` and its written ``outputs`` (kind -> path)."""
    mean_probs = (
        result.tile_probabilities.mean(0) if result.n_tiles else np.zeros(len(result.class_names))
    )
    return {
        "format": RECORD_FORMAT,
        "format_version": RECORD_VERSION,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "slide": {
            "path": str(result.slide_path) if result.slide_path else None,
            "dimensions_wh": list(result.slide_dimensions_wh),
            "mpp_yx": list(result.mpp_yx),
        },
        "model": {
            "arch": getattr(result.card, "arch", None),
            "untrained": result.untrained,
            "card_sha256": card_sha256(result.card),
            "card": card_dict(result.card),
        },
        "versions": package_versions(),
        "parameters": result.parameters,
        "timings_s": result.timings,
        "summary": {
            "tiles": result.n_tiles,
            "background_tiles": result.n_background_tiles,
            "top_class": result.class_names[int(np.argmax(mean_probs))] if result.n_tiles else None,
            "mean_probabilities": {c: float(p) for c, p in zip(result.class_names, mean_probs)},
            "rois": [
                {
                    "name": result.roi_label(index),
                    "verdict": result.roi_verdict(index),
                    "class": roi.class_name,
                    "confidence": roi.confidence,
                    "n_tiles": roi.n_tiles,
                    "n_background_tiles": roi.n_background_tiles,
                    "probabilities": dict(zip(result.class_names, roi.probabilities.tolist())),
                }
                for index, roi in enumerate(result.rois)
            ],
        },
        "run_info": run_info or {},
        "outputs": {
            kind: {"file": Path(p).name, "sha256": file_sha256(p)} for kind, p in outputs.items()
        },
    }


def write_run_record(record: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_open(path, "w") as fh:
        json.dump(record, fh, indent=2, default=_jsonable, allow_nan=False)
        fh.write("\n")
    return path


def record_summary(record: dict) -> dict:
    """``{"tiles", "background_tiles", "top_class"}`` of a run record."""
    summary = record.get("summary", {})
    return {
        "tiles": int(summary.get("tiles", 0)),
        "background_tiles": int(summary.get("background_tiles", 0)),
        "top_class": summary.get("top_class"),
    }


def outputs_complete(out_dir: str | os.PathLike, stem: str) -> bool:
    """True when ``<stem>.run.json`` exists and every output it lists exists with its sha256."""
    out_dir = Path(out_dir)
    run_path = output_paths(out_dir, stem)["run"]
    try:
        record = json.loads(run_path.read_text(encoding="utf-8"))
        outputs = record["outputs"]
        return bool(outputs) and all(
            file_sha256(out_dir / entry["file"]) == entry["sha256"] for entry in outputs.values()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False
