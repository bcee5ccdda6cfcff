"""Checkpoints: safetensors weights plus a JSON model card, written atomically, loaded without pickle.

``dir/model.safetensors`` sits beside ``dir/model.json``. The card names the architecture, classes and
colours, tile size, MPP and normalisation, a training summary, and the sha256 of the weights file, which
is checked on load. Pickle files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are refused, never opened:
unpickling can run code, and ``torch.load(weights_only=True)`` did too before torch 2.6
(CVE-2025-32434). The message says how to convert one to safetensors where it is trusted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from napari_ssmamba._atomic import atomic_open, atomic_path
from napari_ssmamba._provenance import file_sha256
from napari_ssmamba.errors import CheckpointError
from napari_ssmamba.model.constants import IMAGENET_MEAN, IMAGENET_STD

FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
DEFAULT_CHECKPOINT_DIR = Path(__file__).parent / "weights" / "default"


@dataclasses.dataclass
class ModelCard:
    """What a checkpoint is: architecture, classes, input conventions and how it was trained."""

    arch: str
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    tile_size: int = 224
    mpp: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    training: dict = dataclasses.field(default_factory=dict)
    untrained: bool = False
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    weights_sha256: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.class_names = [str(n) for n in self.class_names]
        self.class_colors = [tuple(int(v) for v in c) for c in self.class_colors]
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.class_colors) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.class_colors)} colours")
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.class_colors):
            raise ValueError(f"class colours must be (r, g, b) in 0-255, got {self.class_colors}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> ModelCard:
        """Build a card from its JSON dict; unknown keys are kept out, missing ones are an error."""
        version = data.get("format_version", 0)
        if not isinstance(version, int):
            raise CheckpointError(f"{source}: format_version must be a whole number, got "
                                  f"{version!r}; fix the JSON or re-save")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: model card format {version} is newer than this napari-ssmamba reads "
                f"({FORMAT_VERSION}); upgrade napari-ssmamba")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("arch", "class_names", "class_colors") if k not in data]
        if missing:
            raise CheckpointError(f"{source}: model card lacks {missing}; re-save it with save_checkpoint")
        try:
            return cls(**{k: v for k, v in data.items() if k in fields})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: invalid model card ({exc}); fix the JSON or re-save") from exc


def card_path_for(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def save_checkpoint(model, card: ModelCard, path) -> Path:
    """Write ``model``'s weights to ``path`` (.safetensors; a directory gets model.safetensors) and the
    card beside it as .json, both atomically; the card records the weights' sha256. Returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "model.safetensors"
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    out_features = getattr(head, "out_features", 0)
    if out_features != card.num_classes:
        raise ValueError(f"the model has {out_features} outputs but the card names "
                         f"{card.num_classes} classes; make them agree before saving {path}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "arch": card.arch})
        sha = file_sha256(tmp)
    card = dataclasses.replace(card, weights_sha256=sha, format_version=FORMAT_VERSION)
    with atomic_open(card_path_for(path)) as fh:
        json.dump(card.to_dict(), fh, indent=2)
    return path


def _weights_in_folder(folder: Path) -> Path:
    """A folder's ``model.safetensors`` (save_checkpoint's name), else its ``backbone.safetensors``
    (MAMIM pretraining's), else its only other weights; a training state is not a checkpoint."""
    for name in ("model.safetensors", "backbone.safetensors"):
        if (folder / name).is_file():
            return folder / name
    others = [p for p in sorted(folder.glob("*.safetensors")) if p.stem != "train_state"]
    if len(others) > 1:
        raise CheckpointError(f"{folder}: several checkpoints in this folder "
                              f"({', '.join(p.name for p in others)}); point at one of them")
    others = others or sorted(p for s in PICKLE_SUFFIXES for p in folder.glob(f"*{s}"))
    if not others:
        raise CheckpointError(f"{folder}: no .safetensors weights in this folder; point at a "
                              "checkpoint written by save_checkpoint")
    return others[0]


def _resolve(path: Path) -> tuple[Path, Path]:
    """(weights, card) for a weights file, a card, or a checkpoint directory."""
    if path.is_dir():
        path = _weights_in_folder(path)
    if path.suffix == ".json":
        weights = [path.with_suffix(s) for s in (".safetensors", *PICKLE_SUFFIXES)]
        found = [w for w in weights if w.exists()]
        if not found:
            raise CheckpointError(f"{path}: no weights file beside this card "
                                  f"(expected {path.with_suffix('.safetensors').name})")
        path, card = found[0], path
    else:
        card = card_path_for(path)
    if path.suffix in PICKLE_SUFFIXES:
        converted = path.with_suffix(".safetensors")
        raise CheckpointError(
            f"{path}: a pickle file, which napari-ssmamba never opens (unpickling can run code). "
            "Where you trust the file, convert it: python -c \"import torch; from "
            f"safetensors.torch import save_file; s = torch.load({str(path)!r}, "
            "weights_only=True); s = s.get('state_dict', s.get('model', s)); save_file({k: "
            f"v.clone().contiguous() for k, v in s.items()}}, {str(converted)!r})\", and point "
            f"at {converted.name} with a card {card.name} beside it (one without the old "
            "weights_sha256, or both re-saved with save_checkpoint; see docs/model.md)."
        )
    return path, card


def read_card(path) -> ModelCard:
    """Read the model card of a checkpoint (weights file, card or directory) without loading weights."""
    _, card_path = _resolve(Path(path))
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{card_path}: model card not found; a checkpoint needs its .json card "
                              "beside the weights (write both with save_checkpoint)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{card_path}: unreadable model card ({exc}); restore or re-save it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{card_path}: model card is not a JSON object; re-save it")
    return ModelCard.from_dict(data, source=str(card_path))


def _read_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    raise CheckpointError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors")


def load_checkpoint(path, device="cpu", scan_backend: str = "auto", require_classes: bool = True):
    """Load ``(model, card)`` from a weights file, its card, or a checkpoint directory.

    Never opens a pickle. Raises :class:`CheckpointError` naming the file and the fix when
    the card is missing or invalid, the weights' sha256 differs from the card's, the weights do not
    fit the card's architecture, or (with ``require_classes``) the checkpoint is a backbone
    without classes, such as MAMIM pretraining writes.
    """
    from napari_ssmamba.model.registry import create_model, list_models
    from napari_ssmamba.model.ssmamba import checkpoint_filter_fn

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    weights_path, card_path = _resolve(path)
    card = read_card(card_path)
    if card.weights_sha256 is not None and file_sha256(weights_path) != card.weights_sha256:
        raise CheckpointError(
            f"{weights_path}: sha256 differs from the one in {card_path.name}; the weights were "
            "replaced or damaged. Restore the pair as saved, or re-save with save_checkpoint")
    if card.arch not in list_models():
        raise CheckpointError(f"{card_path}: unknown architecture {card.arch!r}; known: "
                              f"{', '.join(list_models())}")
    if require_classes and card.num_classes == 0:
        raise CheckpointError(
            f"{weights_path}: a backbone without classes (MAMIM pretraining's output), not a "
            f"classifier; fine-tune it first: ssmamba train finetune --init {weights_path}")
    try:
        model = create_model(card.arch, num_classes=card.num_classes, scan_backend=scan_backend,
                             **card.model_kwargs)
    except TypeError as exc:
        raise CheckpointError(f"{card_path}: invalid model_kwargs for {card.arch!r} ({exc}); fix "
                              "the card or re-save the checkpoint with save_checkpoint") from exc
    state = checkpoint_filter_fn(_read_weights(weights_path), model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights_path} does not match its card {card_path.name} (arch {card.arch!r}, "
            f"{card.num_classes} classes): {str(exc).splitlines()[0]} ... Fix 'arch'/'class_names' "
            "in the card or re-save the checkpoint with save_checkpoint") from exc
    model.pretrained_cfg = model.default_cfg = dict(
        model.pretrained_cfg, tile_size=card.tile_size, mpp=card.mpp, mean=card.mean, std=card.std)
    return model.to(device).eval(), card


def default_checkpoint() -> Path:
    """The bundled default model (``model/weights/default/model.safetensors``)."""
    path = DEFAULT_CHECKPOINT_DIR / "model.safetensors"
    if not path.exists() or not card_path_for(path).exists():
        raise CheckpointError(
            f"{path}: the bundled default model is missing from this installation; reinstall "
            "napari-ssmamba, or pass a checkpoint path (ssmamba train writes one)")
    return path
