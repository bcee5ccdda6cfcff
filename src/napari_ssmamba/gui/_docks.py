"""The plugin's widgets docked in a napari window, so that one can update the others."""

from __future__ import annotations


def docked_widgets(viewer, widget_class) -> list:
    """The widgets of ``widget_class`` docked in ``viewer``'s window."""
    found = []
    for dock in viewer.window.dock_widgets.values():
        widget = dock if isinstance(dock, widget_class) else dock.findChild(widget_class)
        if widget is not None:
            found.append(widget)
    return found
