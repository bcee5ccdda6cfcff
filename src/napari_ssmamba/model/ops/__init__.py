"""Scan operators: the selective scan and its backends, and the directional grid scan of DMS."""

from napari_ssmamba.model.ops.grid_scan import (
    DIRECTIONS,
    direction_order,
    grid_scan,
    merge_gate,
    merge_gate_reference,
)
from napari_ssmamba.model.ops.selective_scan import (
    BACKENDS,
    available_backends,
    resolve_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = [
    "BACKENDS",
    "DIRECTIONS",
    "available_backends",
    "direction_order",
    "grid_scan",
    "merge_gate",
    "merge_gate_reference",
    "resolve_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]
