"""The sources by name, the guess of a path's kind, and :func:`open_source`, the one entry point.

``SOURCES`` maps each kind a user may name (``format=``) to the function that opens it; every one takes
``(path, *, options, workers)`` and returns a :class:`~.records.Source`.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

from ...errors import DiffauditError
from .datalist import open_datalist
from .dicom import EXTENSIONS as DICOM_EXTENSIONS
from .files import list_files
from .images import EXTENSIONS as IMAGE_EXTENSIONS
from .nifti import EXTENSIONS as NIFTI_EXTENSIONS
from .npz import open_medmnist
from .records import Source, SourceOptions
from .scan import open_folder

SOURCES: dict[str, Callable[..., Source]] = {
    "medmnist": lambda path, *, options, workers=None: open_medmnist(path, options=options),
    "folder": partial(open_folder, kind="folder"),
    "dicom": partial(open_folder, kind="dicom"),
    "nifti": partial(open_folder, kind="nifti"),
    "datalist": open_datalist,
}


def _is_dicom(path: Path) -> bool:
    """A file with the 'DICM' marker after the 128-byte preamble (PS3.10 7.1)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _file_kind(path: Path) -> str | None:
    low = path.name.lower()
    if low.endswith(".npz"):
        return "medmnist"
    if low.endswith((".csv", ".json")):
        return "datalist"
    if low.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    if low.endswith(IMAGE_EXTENSIONS):
        return "folder"
    if low.endswith(DICOM_EXTENSIONS) or ("." not in low and _is_dicom(path)):
        return "dicom"
    return None


def detect_format(path: str | os.PathLike) -> str:
    """The kind of source at ``path``: a ``.npz`` is ``medmnist``, a ``.csv``/``.json`` a ``datalist``; a folder
    is ``dicom``, ``nifti`` or ``folder`` by the files in it (all of one kind; notes and sidecars aside)."""
    path = Path(path)
    if path.is_file():
        kind = _file_kind(path)
        if kind is None:
            raise DiffauditError(f"{path} is not a file kind diffaudit reads; pass a folder, a .npz, a .csv/.json "
                                 "datalist, or format= (--data-format) one of " + ", ".join(SOURCES))
        return kind
    if not path.is_dir():
        raise DiffauditError(f"{path} does not exist; pass the folder or file that holds the images")
    files, _ = list_files(path)
    kinds = Counter(_file_kind(path / f) for f in files)
    kinds.pop("datalist", None)
    kinds.pop(None, None)
    if not kinds:
        raise DiffauditError(f"{path} holds no images, DICOM or NIfTI files; point the source at the folder of images")
    if len(kinds) > 1:
        found = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
        raise DiffauditError(f"{path} holds files of several kinds ({found}); pass format= (--data-format) the one to read")
    return next(iter(kinds))


def open_source(path: str | os.PathLike, *, format: str | None = None, labels: str = "auto",
                skip_unreadable: bool = False, frames: str = "single", slice: str = "2:mid",
                window: tuple[float, float] | None = None, workers: int | None = None,
                log: Callable[[str], None] = print) -> Source:
    """Scan the source at ``path`` into records (every file decoded once and hashed; nothing is kept).

    ``format`` overrides :func:`detect_format`; the other options are :class:`~.records.SourceOptions`'s.
    ``workers`` threads read the files (default: up to 4)."""
    path = Path(path)
    kind = format or detect_format(path)
    if kind not in SOURCES:
        raise DiffauditError(f"format='{kind}' is unknown; choose one of {', '.join(SOURCES)}")
    if not path.exists():
        raise DiffauditError(f"{path} does not exist; pass the folder or file that holds the images")
    options = SourceOptions(labels=labels, skip_unreadable=skip_unreadable, frames=frames, slice=slice, window=window)
    source = SOURCES[kind](path, options=options, workers=workers)
    files = len({r.path for r in source})
    log(f"{path}: {len(source)} images from {files} {kind} files"
        + (f", {len(source.skipped)} unreadable files skipped (first: {source.skipped[0].path})" if source.skipped else "")
        + (f", {len(source.ignored)} files ignored" if source.ignored else ""))
    return source
