"""QuPath projects (project.qpproj): their images, classes, and the GeoJSON exported beside them.

A project is a folder holding ``project.qpproj`` (JSON: one entry per image with the URI of the
image file and the server's metadata), ``classifiers/classes.json`` (the class list with packed
colours) and ``data/<entry id>/`` (``server.json``, ``summary.json`` and ``data.qpdata``). The
objects themselves live in ``data.qpdata``, which is Java serialization that only QuPath reads:
export them with File > Export objects as GeoJSON, and :meth:`QuPathProject.geojson_files` finds
the exported files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from napari_ssmamba.annotations.annotation import Annotation
from napari_ssmamba.annotations.colors import RGB, unpack_rgb
from napari_ssmamba.annotations.geojson import read_geojson
from napari_ssmamba.errors import AnnotationError
from napari_ssmamba.slide.properties import plausible_mpp, to_microns

__all__ = ["QuPathImage", "QuPathProject", "read_qupath_project"]

PROJECT_FILE_NAME = "project.qpproj"

# Sub-folders of a project where scripts and users commonly put exported GeoJSON.
_EXPORT_FOLDERS = ("", "export", "exports", "annotations", "geojson")

@dataclass(frozen=True)
class QuPathImage:
    """One image entry of a QuPath project.

    ``path`` is the image file where it was found (``None`` if it is missing), ``expected_path``
    where the project says it is, and ``searched`` every place that was tried. ``mpp`` is
    ``(mpp_y, mpp_x)`` in µm per pixel when QuPath knew the pixel size.
    """

    entry_id: str
    name: str
    uri: str | None
    path: Path | None
    expected_path: Path | None
    searched: tuple[Path, ...]
    data_dir: Path
    width: int | None = None
    height: int | None = None
    mpp: tuple[float, float] | None = None
    server_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    server_metadata: dict[str, Any] = field(default_factory=dict)
    description: str | None = None

    @property
    def exists(self) -> bool:
        """True when the image file was found."""
        return self.path is not None

    @property
    def qpdata_path(self) -> Path | None:
        """QuPath's own object file for this image (``data/<id>/data.qpdata``), if present."""
        path = self.data_dir / "data.qpdata"
        return path if path.is_file() else None

    @property
    def stem(self) -> str:
        """The image name without its file extension(s) (``"slide"`` for ``"slide.ome.tif"``)."""
        from napari_ssmamba.export.paths import slide_stem

        return slide_stem(self.name)

    def missing_message(self) -> str:
        """Why the image cannot be opened and where it was expected, for the user to read."""
        if self.expected_path is None:
            return (
                f"Image '{self.name}' has no local file in the project (server "
                f"{self.server_type or 'unknown'}, URI {self.uri!r}); open the slide directly."
            )
        tried = "\n  ".join(str(p) for p in self.searched)
        return (
            f"Image file for '{self.name}' not found. The project expects it at "
            f"{self.expected_path}.\nLooked in:\n  {tried}\nCopy the slide to one of these "
            "places, or open it directly with File > Open."
        )


@dataclass(frozen=True)
class QuPathProject:
    """A QuPath project read from ``project.qpproj``; see :func:`read_qupath_project`."""

    path: Path
    version: str | None
    images: tuple[QuPathImage, ...]
    classes: dict[str, RGB]

    @property
    def directory(self) -> Path:
        """The project folder."""
        return self.path.parent

    def image(self, key: str | int) -> QuPathImage:
        """The image with this entry id or name; raises ``KeyError`` if there is none."""
        for image in self.images:
            if str(key) in (image.entry_id, image.name):
                return image
        raise KeyError(f"{self.path} has no image {key!r}")

    def geojson_files(self, image: QuPathImage) -> list[Path]:
        """GeoJSON files exported for ``image``: best matches first.

        Looks in the project folder (and its ``export``/``exports``/``annotations``/``geojson``
        sub-folders), in ``data/<entry id>/`` and beside the image file, for ``*.geojson`` whose
        name starts with the image name (without extension). In a project with a single image,
        every ``*.geojson`` of the project folder belongs to that image.
        """
        folders = [self.directory / sub for sub in _EXPORT_FOLDERS] + [image.data_dir]
        if image.path is not None:
            folders.append(image.path.parent)
        stem = image.stem.lower()
        exact, prefixed, others = [], [], []
        seen: set[Path] = set()
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.geojson")):
                resolved = path.resolve()
                if resolved in seen:
                    continue
                name = path.stem.lower()
                if name == stem:
                    exact.append(path)
                elif name.startswith(stem):
                    prefixed.append(path)
                elif len(self.images) == 1 and folder in (self.directory, image.data_dir):
                    others.append(path)
                else:
                    continue
                seen.add(resolved)
        return exact + prefixed + others

    def annotations_for_image(
        self, image: QuPathImage, report: list[str] | None = None
    ) -> list[Annotation]:
        """The Annotations of every GeoJSON file :meth:`geojson_files` finds for ``image``.

        Class colours missing from the files are taken from the project's class list. Returns an
        empty list when nothing was exported; ``image.qpdata_path`` then tells whether QuPath
        holds objects that still need exporting.
        """
        annotations = []
        for path in self.geojson_files(image):
            annotations.extend(self.read_annotations(path, report=report))
        return annotations

    def read_annotations(self, path: str | os.PathLike, report: list[str] | None = None
                         ) -> list[Annotation]:
        """The Annotations of one GeoJSON file, class colours missing from it taken from the
        project's class list."""
        annotations = read_geojson(path, report=report)
        for annotation in annotations:
            if annotation.class_name and annotation.color is None:
                annotation.color = self.classes.get(annotation.class_name)
        return annotations


def read_qupath_project(path: str | os.PathLike) -> QuPathProject:
    """Read a QuPath project from its ``project.qpproj`` file or its folder.

    Image paths are resolved from the entries' ``file:`` URIs; when the project was moved, the
    image is also looked for at the same place relative to the project, and by name in the
    project folder and its parent. Raises ``AnnotationError`` for a malformed project file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PROJECT_FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No QuPath project at {path}: choose the project.qpproj file of a QuPath project."
        )
    project = _load_json(path, "QuPath project")
    if not isinstance(project, dict) or not isinstance(project.get("images"), list):
        raise AnnotationError(
            f"{path} is not a QuPath project file (no 'images' list): choose the project.qpproj "
            "file of a QuPath project."
        )
    old_directory = _path_from_uri(project.get("uri")) if project.get("uri") else None
    if old_directory is not None:
        old_directory = old_directory.parent
    images = tuple(
        _read_image(entry, index, path, old_directory)
        for index, entry in enumerate(project["images"])
    )
    return QuPathProject(
        path=path,
        version=project.get("version"),
        images=images,
        classes=_read_classes(path.parent / "classifiers" / "classes.json"),
    )


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AnnotationError(f"{path} is not a readable {what} (not valid JSON: {exc}).") from None


def _read_classes(path: Path) -> dict[str, RGB]:
    if not path.is_file():
        return {}
    data = _load_json(path, "QuPath class list")
    entries = data.get("pathClasses") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise AnnotationError(f"{path} is not a QuPath class list (no 'pathClasses' list).")
    classes = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            color = entry.get("color")
            valid = isinstance(color, int) and not isinstance(color, bool)
            classes[entry["name"]] = unpack_rgb(color) if valid else None
    return {name: color for name, color in classes.items() if color is not None}


def _read_image(
    entry: Any, index: int, project_path: Path, old_directory: Path | None
) -> QuPathImage:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{project_path}: image entry {index} is not an object.")
    entry_id = str(entry.get("entryID", index + 1))
    data_dir = project_path.parent / "data" / entry_id
    builder = _uri_builder(entry.get("serverBuilder") or {})
    server_json = data_dir / "server.json"
    if server_json.is_file():
        server = _load_json(server_json, "QuPath server description")
        if isinstance(server, dict):
            builder = _uri_builder(server) or builder
    server_metadata = builder.get("metadata") if isinstance(builder.get("metadata"), dict) else {}
    uri = builder.get("uri") if isinstance(builder.get("uri"), str) else None
    expected = _path_from_uri(uri) if uri else None
    name = (
        entry.get("imageName")
        or server_metadata.get("name")
        or (expected.name if expected else f"image {entry_id}")
    )
    searched = _candidate_paths(expected, project_path.parent, old_directory)
    found = next((p for p in searched if p.is_file()), None)
    return QuPathImage(
        entry_id=entry_id,
        name=str(name),
        uri=uri,
        path=found,
        expected_path=expected,
        searched=tuple(searched),
        data_dir=data_dir,
        width=_int_or_none(server_metadata.get("width")),
        height=_int_or_none(server_metadata.get("height")),
        mpp=_mpp(server_metadata.get("pixelCalibration")),
        server_type=builder.get("providerClassName") or builder.get("builderType"),
        metadata=entry.get("metadata") if isinstance(entry.get("metadata"), dict) else {},
        server_metadata=server_metadata,
        description=entry.get("description"),
    )


def _uri_builder(builder: Any) -> dict:
    """The innermost server builder that names a file (QuPath wraps rotated/pyramidized ones)."""
    for _ in range(8):
        if not isinstance(builder, dict):
            return {}
        if "uri" in builder or not isinstance(builder.get("builder"), dict):
            return builder
        builder = builder["builder"]
    return {}


def _path_from_uri(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme.lower() != "file":
        return None
    text = unquote(parsed.path)
    if re.match(r"^/[A-Za-z]:[/\\]", text):  # file:/C:/... on Windows
        text = text[1:]
    if parsed.netloc and parsed.netloc != "localhost":
        text = f"//{parsed.netloc}{text}"
    return Path(text)


def _candidate_paths(
    expected: Path | None, directory: Path, old_directory: Path | None
) -> list[Path]:
    if expected is None:
        return []
    candidates = [expected]
    if old_directory is not None:
        for old, new in ((old_directory, directory), (old_directory.parent, directory.parent)):
            try:
                relative = expected.relative_to(old)
            except ValueError:
                continue
            candidates.append(new / relative)
    name = re.split(r"[/\\]", str(expected))[-1]
    candidates += [directory / name, directory.parent / name]
    return list(dict.fromkeys(candidates))


def _mpp(calibration: Any) -> tuple[float, float] | None:
    if not isinstance(calibration, dict):
        return None
    sizes = []
    for key in ("pixelHeight", "pixelWidth"):
        size = calibration.get(key)
        if not isinstance(size, dict):
            return None
        value, unit = size.get("value"), str(size.get("unit", "")).strip()
        if not unit or not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        microns = to_microns(value, unit)  # None for QuPath's "px" of an uncalibrated image
        if not plausible_mpp(microns):
            return None
        sizes.append(microns)
    return (sizes[0], sizes[1])


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
