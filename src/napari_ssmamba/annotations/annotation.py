"""The Annotation value type: one QuPath object (annotation, detection, cell, tile, TMA core)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from napari_ssmamba.annotations.colors import RGB, UNCLASSIFIED_COLOR, default_class_color

#: The object types QuPath writes in ``properties.objectType``.
OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tmaCore")

#: Object types that QuPath treats as detections (many, small, not edited by hand).
DETECTION_TYPES = ("detection", "cell", "tile")


def new_id() -> str:
    """A fresh random UUID string, as QuPath gives every object."""
    return str(uuid.uuid4())


@dataclass
class Annotation:
    """One object of a QuPath hierarchy, with its geometry in level-0 pixel coordinates (x, y).

    ``class_name`` is QuPath's classification; derived classes are joined with ``": "``
    (``"Tumor: Positive"``). ``color`` is the class colour as ``(r, g, b)``; for an object without
    a class it is the object's own colour, and ``None`` means "use the default"
    (see :attr:`display_color`). ``extra_properties`` and ``extra_members`` hold whatever else the
    feature carried (in ``properties`` and beside it), so a file read and written back loses
    nothing.
    """

    geometry: Any
    object_type: str = "annotation"
    class_name: str | None = None
    color: RGB | None = None
    name: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    locked: bool = False
    nucleus_geometry: Any = None
    plane: dict[str, int] | None = None
    is_ellipse: bool = False
    extra_properties: dict[str, Any] = field(default_factory=dict)
    extra_members: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The parts of a derived class (``("Tumor", "Positive")``); empty when unclassified."""
        return tuple(self.class_name.split(": ")) if self.class_name else ()

    @property
    def display_color(self) -> RGB:
        """The colour to draw: ``color``, else the class default, else QuPath's unclassified red."""
        if self.color is not None:
            return self.color
        if self.class_name:
            return default_class_color(self.class_name)
        return UNCLASSIFIED_COLOR
