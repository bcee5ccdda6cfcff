"""Resumable training state as safetensors + JSON: weights, optimizer moments, RNG, progress.

Nothing here is pickled: tensors go to ``train_state.safetensors`` under flat names, everything
else (optimizer hyper-parameters, epoch, history, best score) to ``train_state.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from napari_ssmamba._atomic import atomic_open, atomic_path
from napari_ssmamba.errors import CheckpointError

TENSORS = "train_state.safetensors"
META = "train_state.json"


def save_train_state(directory: str | Path, model, optimizer, meta: dict) -> Path:
    """Write model weights, optimizer state, torch RNG states and ``meta`` into ``directory``.

    The JSON is written last, so its presence marks a complete state.
    """
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    scalars = {}
    for param_id, entries in optim_state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{name}"] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    with atomic_path(directory / TENSORS) as tmp:
        save_file(tensors, str(tmp))
    record = {"meta": meta, "param_groups": optim_state["param_groups"], "optimizer_scalars": scalars}
    with atomic_open(directory / META) as fh:
        json.dump(record, fh, indent=1)
    return directory


def has_train_state(directory: str | Path) -> bool:
    """True when ``directory`` holds both files that :func:`save_train_state` writes."""
    return (Path(directory) / META).is_file() and (Path(directory) / TENSORS).is_file()


def load_train_state(directory: str | Path, model, optimizer) -> dict:
    """Restore what :func:`save_train_state` wrote into ``model`` and ``optimizer``; return ``meta``."""
    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        record = json.loads((directory / META).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / TENSORS))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{directory}: training state is unreadable ({exc}); delete the folder to start afresh"
        ) from exc
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for key, value in record["optimizer_scalars"].items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return record["meta"]
